#!/usr/bin/env bash
# Issue 7's side-by-side benchmark, in one run on one machine: the peers (Joey NMT 2.3, OpenNMT-py 3.5.1; set up
# and run by ../shared/peers/run_peers.sh), then this project on the same work (configs/peers_work.yaml), then
# the report with the ratios (runs/benchmark_peers/report.md). About 70 minutes on 2 cores; run it in the
# background on an otherwise idle machine:
#   nohup bash scripts/benchmark_peers.sh > runs/benchmark_peers.log 2>&1 &
#   bash scripts/benchmark_peers.sh ours report      # only some steps: peers ours extras report
#   bash scripts/benchmark_peers.sh peers_decode ours_decode report   # decoding only, of the models a full run left
#   ROUNDS=3 bash scripts/benchmark_peers.sh decode_rounds   # decoding speed and peak RSS only, alternating peers
#                                                             # and ours, ROUNDS times
set -euo pipefail
cd "$(dirname "$0")/.."
export PEERS=${PEERS:-/tmp/peers} OMP_NUM_THREADS=2 MKL_NUM_THREADS=2
SHARED=${SHARED:-$(cd .. && pwd)/shared}
OUT=${OUT:-runs/benchmark_peers}
BIN=${BIN:-.venv/bin}
mkdir -p "$OUT/logs"

timed() {  # timed NAME cmd...: /usr/bin/time -v into logs/NAME.time, output into logs/NAME.log
  local name=$1; shift
  echo "[$(date -u +%FT%TZ)] start $name" | tee -a "$OUT/logs/sequence.log"
  /usr/bin/time -v -o "$OUT/logs/$name.time" "$@" > "$OUT/logs/$name.log" 2>&1
  echo "[$(date -u +%FT%TZ)] end   $name" | tee -a "$OUT/logs/sequence.log"
}

train() {  # train NAME --set ...
  local name=$1; shift
  timed "train_$name" "$BIN/hf-rnn-attention" train --config configs/peers_work.yaml --overwrite \
      --set "training.output_dir=$OUT/$name" "$@" \
      --set "data.files.train={source: $PEERS/data/train.raw.de, target: $PEERS/data/train.raw.en}" \
      --set "data.files.validation={source: $PEERS/data/val.raw.de, target: $PEERS/data/val.raw.en}" \
      --set "data.files.test={source: $PEERS/data/test.raw.de, target: $PEERS/data/test.raw.en}" \
      --set "tokenizer.path=$PEERS/data/bpe8k.json"
}

decode() {  # decode NAME: greedy and beam 5 on test_2016_flickr, each a fresh process
  for b in 1 5; do
    timed "decode_$1_b$b" "$BIN/python" scripts/benchmark_peers.py decode "$OUT/$1" --num-beams "$b" \
        --source "$PEERS/data/test.raw.de" --reference "$PEERS/data/test.raw.en" --output "$OUT/$1/decode_b$b.json"
    # the peak memory of decoding, from what a user runs (as the peers' `joeynmt test` / `onmt_translate`): the
    # translate command alone, not the timing script's extra passes; its translations go to the log
    timed "translate_$1_b$b" "$BIN/hf-rnn-attention" translate "$OUT/$1" --input "$PEERS/data/test.raw.de" \
        --num-beams "$b" --batch-size 64 --max-new-tokens 100
  done
}

peers() { bash "$SHARED/peers/run_peers.sh" setup data ceiling joey onmt_mlp collect; }

peers_decode() {  # the peers' decoding again, of the checkpoints a full run left in $PEERS, with run_peers.sh's own
  # commands (the configs it rendered), then its collect step: a decoding comparison without the hour of training
  local log="$PEERS/logs/sequence.log"
  for b in 1 5; do
    echo "[$(date -u +%FT%TZ)] start joey_b$b (decoding only)" | tee -a "$log"
    /usr/bin/time -v -o "$PEERS/logs/joey_b$b.time" "$PEERS/venv-joey/bin/python" -m joeynmt test \
        "$PEERS/cfg/joey_b$b.yaml" -o "$PEERS/runs/joey_bahdanau/hyp_b$b" > "$PEERS/logs/joey_b$b.log" 2>&1
    echo "[$(date -u +%FT%TZ)] start onmt_mlp_b$b (decoding only)" | tee -a "$log"
    /usr/bin/time -v -o "$PEERS/logs/onmt_mlp_b$b.time" env TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 \
        "$PEERS/venv-onmt/bin/onmt_translate" -model "$PEERS/runs/onmt_mlp/model_step_454.pt" \
        -src "$PEERS/data/test.bpe.de" -output "$PEERS/runs/onmt_mlp/hyp_b$b.txt" -beam_size $b -batch_size 64 \
        -batch_type sents -max_length 100 -gpu -1 -report_time -seed 1 > "$PEERS/logs/onmt_mlp_b$b.log" 2>&1
  done
  echo "[$(date -u +%FT%TZ)] end peers_decode" | tee -a "$log"
  bash "$SHARED/peers/run_peers.sh" collect
}

ours() {
  for preset in bahdanau luong; do
    train "$preset" --set "model.preset=$preset"
    decode "$preset"
  done
}

ours_decode() {  # decoding again, of the models a full run left in $OUT
  for name in bahdanau luong bahdanau_bf16 luong_bf16; do
    if [ -d "$OUT/$name" ]; then decode "$name"; fi
  done
}

decode_rounds() {  # ROUNDS rounds (default 3), each: the peers' decoding, then ours, of the checkpoints a full run
  # left, alternating, so that the machine's drift reaches every system alike. Speed from the peers' own reports and
  # from our translate path (`benchmark_peers.py decode --translate-only`); peak RSS (`/usr/bin/time -v`) of the
  # peers' commands and of our translate command (what a user runs; its own process, not the timing script's).
  # Logs and results in $OUT/decode_rounds/round_N, the summary (each round, each ratio, medians) in its rounds.md
  local folder="$OUT/decode_rounds"
  for r in $(seq 1 "${ROUNDS:-3}"); do
    local dir="$folder/round_$r"
    mkdir -p "$dir"
    for b in 1 5; do
      echo "[$(date -u +%FT%TZ)] round $r: joey, onmt_mlp, ours, beam $b" | tee -a "$OUT/logs/sequence.log"
      /usr/bin/time -v -o "$dir/joey_b$b.time" "$PEERS/venv-joey/bin/python" -m joeynmt test \
          "$PEERS/cfg/joey_b$b.yaml" -o "$dir/joey_hyp_b$b" > "$dir/joey_b$b.log" 2>&1
      /usr/bin/time -v -o "$dir/onmt_b$b.time" env TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 \
          "$PEERS/venv-onmt/bin/onmt_translate" -model "$PEERS/runs/onmt_mlp/model_step_454.pt" \
          -src "$PEERS/data/test.bpe.de" -output "$dir/onmt_hyp_b$b.txt" -beam_size $b -batch_size 64 \
          -batch_type sents -max_length 100 -gpu -1 -report_time -seed 1 > "$dir/onmt_b$b.log" 2>&1
      for name in bahdanau luong; do
        "$BIN/python" scripts/benchmark_peers.py decode "$OUT/$name" --num-beams "$b" --translate-only \
            --source "$PEERS/data/test.raw.de" --reference "$PEERS/data/test.raw.en" \
            --output "$dir/${name}_b$b.json" > "$dir/${name}_b$b.log" 2>&1
        /usr/bin/time -v -o "$dir/${name}_b$b.time" "$BIN/hf-rnn-attention" translate "$OUT/$name" \
            --input "$PEERS/data/test.raw.de" --num-beams "$b" --batch-size 64 --max-new-tokens 100 \
            > "$dir/${name}_translate_b$b.txt" 2> "$dir/${name}_translate_b$b.log"
      done
    done
  done
  "$BIN/python" scripts/benchmark_peers.py rounds "$folder" | tee "$folder/rounds.md"
}

bf16_faster() {  # whether run_peers.sh's measured bf16 matmul ceiling beats fp32 on this CPU (the flag alone does not
  # tell: an Intel Xeon with avx512_bf16 ran bf16 matmuls at 0.6x fp32, an AMD EPYC at 2.6x)
  "$BIN/python" -c "import json, sys; c = json.load(open('$PEERS/results.json'))['ceiling']
sys.exit(0 if c['square_2048_bfloat16_gflops'] > c['square_2048_float32_gflops'] else 1)"
}

extras() {  # length-grouped batches (the project's default) and bf16 autocast (only where bf16 matmuls are faster)
  for preset in bahdanau luong; do
    train "${preset}_grouped" --set "model.preset=$preset" --set training.group_by_length=true
  done
  if bf16_faster; then
    for preset in bahdanau luong; do
      train "${preset}_bf16" --set "model.preset=$preset" --set training.bf16=true --set training.use_cpu=true
      decode "${preset}_bf16"
    done
  else
    echo "bf16 matmuls are not faster than fp32 on this CPU (run_peers.sh ceiling): bf16 skipped" | tee -a "$OUT/logs/sequence.log"
  fi
}

report() { "$BIN/python" scripts/benchmark_peers.py report --peers "$PEERS" --runs "$OUT" | tee "$OUT/report.md"; }

steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(peers ours extras report)
for s in "${steps[@]}"; do
  case $s in
    peers|ours|extras|report|peers_decode|ours_decode|decode_rounds) $s ;;
    *) echo "unknown step $s (allowed: peers ours extras report peers_decode ours_decode decode_rounds)" >&2; exit 2 ;;
  esac
done
