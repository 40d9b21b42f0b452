#!/usr/bin/env bash
# The whole tiny LLaDA2.0 recipe in one command (docs/training.md):
#   data -> tokenizer -> AR parent -> noise ablation -> conversion (WSD block schedule, noise on
#   masked embeddings) -> block-diffusion SFT -> export -> verification against dmoe ->
#   threshold sweep with `dmoe eval` -> plots and model cards.
#
#   tools/train/run_all.sh                 # full recipe: models/tiny-{ar,diffusion}, docs/training/
#   PRESET=smoke tools/train/run_all.sh    # a few minutes; writes only under $WORK
#
# Environment: SEED (0), PRESET (full|smoke), WORK (build/tiny-recipe), THREADS (2),
# DMOE_BIN (build/bin; built with scripts/build when missing), OUT_AR / OUT_DIFFUSION / DOCS.
# Installs what it needs with apt (Debian's PyTorch, fortunes) on first use.
# The LLaDA2.1-style follow-up (T2T token-editing training from models/tiny-diffusion, and the
# --editing off|speed|quality measurements) is tools/train/run_t2t.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
SEED=${SEED:-0}
PRESET=${PRESET:-full}
WORK=${WORK:-build/tiny-recipe}
THREADS=${THREADS:-2}
DMOE_BIN=${DMOE_BIN:-build/bin}
PY=/usr/bin/python3
T=tools/train

case "$PRESET" in
  full)
    OUT_AR=${OUT_AR:-models/tiny-ar}
    OUT_DIFFUSION=${OUT_DIFFUSION:-models/tiny-diffusion}
    DOCS=${DOCS:-docs/training}
    AR_STEPS=1500; CONVERT_STEPS=300; SFT_STEPS=600; ABLATION_STEPS=40; NOISE_STEPS=30
    ROWS=16; LIMIT=0 ;;
  smoke)
    OUT_AR=${OUT_AR:-$WORK/models/tiny-ar}
    OUT_DIFFUSION=${OUT_DIFFUSION:-$WORK/models/tiny-diffusion}
    DOCS=${DOCS:-$WORK/docs}
    AR_STEPS=30; CONVERT_STEPS=24; SFT_STEPS=16; ABLATION_STEPS=8; NOISE_STEPS=6
    ROWS=8; LIMIT=10 ;;
  *) echo "run_all: PRESET must be full or smoke" >&2; exit 2 ;;
esac

# Debian's PyTorch and the corpus packages (not part of scripts/setup: only training needs them).
train_packages=(python3-torch python3-numpy python3-matplotlib python3-regex fortunes fortunes-min)
if ! $PY -c "import torch, numpy, matplotlib, regex" 2>/dev/null || [ ! -d /usr/share/games/fortunes ]; then
  echo "run_all: installing ${train_packages[*]}"
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends \
    "${train_packages[@]}"
fi
if [ ! -x "$DMOE_BIN/dmoe" ] || [ ! -x "$DMOE_BIN/dmoe-train-tokenizer" ]; then
  scripts/build
fi
# Two compute threads that sleep instead of spinning when they wait (the machine is shared),
# and no second thread pool inside OpenBLAS.
export OMP_WAIT_POLICY=PASSIVE OPENBLAS_NUM_THREADS=1
mkdir -p "$WORK" "$DOCS"
START=$(date +%s)
stage() { echo; echo "== [$(( $(date +%s) - START ))s] $*"; }
COMMON=(--data "$WORK/data" --tokenizer "$WORK/tokenizer" --work "$WORK" --seed "$SEED"
        --threads "$THREADS" --rows "$ROWS" --task-weight 0.7)

stage "1/8 data (seed $SEED)"
$PY $T/make_data.py --out "$WORK/data" --seed "$SEED"
stage "2/8 tokenizer (byte-level BPE, 2500 merges)"
"$DMOE_BIN/dmoe-train-tokenizer" --merges 2500 -o "$WORK/tokenizer" "$WORK/data/tokenizer_corpus.txt"
rm -f "$WORK/encoded.pt"

stage "3/8 AR parent: next-token training ($AR_STEPS steps)"
$PY $T/train.py ar "${COMMON[@]}" --steps "$AR_STEPS" --lr 3e-3 --warmup 50 \
  --out "$WORK/ar.pt" --log "$WORK/ar.jsonl"
$PY $T/export.py --state "$WORK/ar.pt" --kind ar --tokenizer "$WORK/tokenizer" --out "$OUT_AR"

CONVERT=(convert "${COMMON[@]}" --init "$WORK/ar.pt" --steps "$CONVERT_STEPS" --lr 1e-3 --warmup 20
         --schedule "1:0.1,4:0.1,32:0.1,128:0.3,64:0.15,32:0.25" --noise-scale 1.0)
stage "4/8 noise ablation: the first $ABLATION_STEPS conversion steps without noise"
$PY $T/train.py "${CONVERT[@]}" --noise-steps 0 --stop-after "$ABLATION_STEPS" \
  --out "$WORK/convert_no_noise.pt" --log "$WORK/convert_no_noise.jsonl"
stage "5/8 conversion: block-diffusion CPT, WSD block schedule, noise for $NOISE_STEPS steps"
$PY $T/train.py "${CONVERT[@]}" --noise-steps "$NOISE_STEPS" \
  --out "$WORK/convert.pt" --log "$WORK/convert.jsonl"
stage "6/8 SFT: block 32, prompt never masked, mask ratio in [0.3, 1.0], CAP"
$PY $T/train.py sft "${COMMON[@]}" --init "$WORK/convert.pt" --steps "$SFT_STEPS" --lr 1e-3 \
  --warmup 20 --block 32 --ratio-lo 0.3 --ratio-hi 1.0 --cap 0.5 \
  --out "$WORK/sft.pt" --log "$WORK/sft.jsonl"
$PY $T/export.py --state "$WORK/sft.pt" --kind diffusion --tokenizer "$WORK/tokenizer" \
  --out "$OUT_DIFFUSION"
TRAIN_END=$(date +%s)

stage "7/8 verification: dmoe vs PyTorch (AR greedy, reference generate())"
$PY $T/verify.py --dmoe "$DMOE_BIN/dmoe" --ar "$OUT_AR" --diffusion "$OUT_DIFFUSION" \
  --tasks "$WORK/data/tasks_eval.jsonl" --corpus "$WORK/data/corpus_eval.jsonl" \
  --out "$DOCS/verify.json"

stage "8/8 evaluation sweep and plots"
$PY $T/sweep.py --dmoe "$DMOE_BIN/dmoe" --ar "$OUT_AR" --diffusion "$OUT_DIFFUSION" \
  --tasks "$WORK/data/tasks_eval.jsonl" --limit "$LIMIT" --threads "$THREADS" --out "$DOCS/sweep"
$PY $T/plots.py curves --ar "$WORK/ar.jsonl" --convert "$WORK/convert.jsonl" \
  --sft "$WORK/sft.jsonl" --out "$DOCS/training_curves.png"
$PY $T/plots.py schedule --convert "$WORK/convert.jsonl" --out "$DOCS/block_schedule.png"
$PY $T/plots.py ablation --noise "$WORK/convert.jsonl" --no-noise "$WORK/convert_no_noise.jsonl" \
  --steps "$ABLATION_STEPS" --out "$DOCS/noise_ablation.png"

END=$(date +%s)
$PY - "$WORK/timings.json" "$START" "$TRAIN_END" "$END" "$PRESET" <<'EOF'
import json, os, sys
path, start, train_end, end, preset = sys.argv[1], *map(int, sys.argv[2:5]), sys.argv[5]
load = os.getloadavg()
json.dump({"preset": preset, "total_seconds": end - start, "train_seconds": train_end - start,
           "machine": f"{os.cpu_count()} cores, load average at the end {load[0]:.1f}"},
          open(path, "w"), indent=2)
EOF
CMD="tools/train/run_all.sh   # PRESET=$PRESET SEED=$SEED THREADS=$THREADS"
for kind in ar diffusion; do
  out=$OUT_AR; [ $kind = diffusion ] && out=$OUT_DIFFUSION
  $PY $T/model_card.py --model "$out" --kind $kind --work "$WORK" --seed "$SEED" \
    --command "$CMD" --sweep "$DOCS/sweep.json" --verify "$DOCS/verify.json"
done
cp "$WORK/timings.json" "$DOCS/timings.json"
stage "done in $(( (END - START) / 60 )) min $(( (END - START) % 60 )) s: $OUT_AR, $OUT_DIFFUSION, $DOCS"
