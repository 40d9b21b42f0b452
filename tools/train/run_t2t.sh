#!/usr/bin/env bash
# The tiny LLaDA2.1-style model (docs/training.md, "Token editing"; docs/training/editing.md):
#   models/tiny-diffusion -> state file (import_model.py, exact round trip) -> T2T training
#   (train.py t2t: M2T mask filling + T2T editing of substituted tokens) -> export -> verification
#   against dmoe (LLaDA2.0 and LLaDA2.1 decoding) -> `dmoe eval` with --editing off|speed|quality
#   -> table, plot, model card.
# A control is trained alongside: the same steps of plain SFT (`train.py sft`, no substitution)
# from the same start, so the table tells what T2T does from what more SFT steps do.
#
#   tools/train/run_t2t.sh                 # full: models/tiny-diffusion-t2t, docs/training/editing.*
#   PRESET=smoke tools/train/run_t2t.sh    # a few minutes; writes only under $WORK
#
# Environment: SEED (0), PRESET (full|smoke), WORK (build/t2t-recipe), THREADS (1: the machine
# is shared with C++ builds), DMOE_BIN (build/bin; built with scripts/build when missing),
# BASE (models/tiny-diffusion), AR (models/tiny-ar, for verify.py's AR check), OUT_T2T, DOCS,
# CONTROL (1: train and evaluate the plain-SFT control too; 0: skip it).
set -euo pipefail
cd "$(dirname "$0")/../.."
SEED=${SEED:-0}
PRESET=${PRESET:-full}
WORK=${WORK:-build/t2t-recipe}
THREADS=${THREADS:-1}
DMOE_BIN=${DMOE_BIN:-build/bin}
BASE=${BASE:-models/tiny-diffusion}
AR=${AR:-models/tiny-ar}
CONTROL=${CONTROL:-1}
PY=/usr/bin/python3
T=tools/train

case "$PRESET" in
  full)
    OUT_T2T=${OUT_T2T:-models/tiny-diffusion-t2t}
    DOCS=${DOCS:-docs/training}
    STEPS=1200; LIMIT=0; PER_TASK=2 ;;
  smoke)
    OUT_T2T=${OUT_T2T:-$WORK/models/tiny-diffusion-t2t}
    DOCS=${DOCS:-$WORK/docs}
    STEPS=16; LIMIT=4; PER_TASK=1 ;;
  *) echo "run_t2t: PRESET must be full or smoke" >&2; exit 2 ;;
esac
OUT_CONTROL=$WORK/models/tiny-diffusion-sft-control

# Debian's PyTorch and the corpus packages, as run_all.sh installs them.
train_packages=(python3-torch python3-numpy python3-matplotlib python3-regex fortunes fortunes-min)
if ! $PY -c "import torch, numpy, matplotlib, regex" 2>/dev/null || [ ! -d /usr/share/games/fortunes ]; then
  echo "run_t2t: installing ${train_packages[*]}"
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends \
    "${train_packages[@]}"
fi
if [ ! -x "$DMOE_BIN/dmoe" ]; then
  scripts/build
fi
export OMP_WAIT_POLICY=PASSIVE OPENBLAS_NUM_THREADS=1
mkdir -p "$WORK" "$DOCS"
START=$(date +%s)
stage() { echo; echo "== [$(( $(date +%s) - START ))s] $*"; }
# The SFT settings of run_all.sh (block 32, mask ratio in [0.3, 1.0], CAP 0.5), a lower peak
# learning rate since training continues from a finished model.
TRAIN=(--data "$WORK/data" --tokenizer "$BASE" --work "$WORK" --seed "$SEED" --threads "$THREADS"
       --rows 16 --init "$WORK/base.pt" --steps "$STEPS" --lr 5e-4 --warmup 20 --block 32
       --ratio-lo 0.3 --ratio-hi 1.0 --cap 0.5)

stage "1/6 data (seed $SEED; the same files run_all.sh trained $BASE on)"
$PY $T/make_data.py --out "$WORK/data" --seed "$SEED"
if ! cmp -s "$WORK/data/tasks_eval.jsonl" "$BASE/eval_tasks.jsonl"; then
  echo "run_t2t: $WORK/data/tasks_eval.jsonl differs from $BASE/eval_tasks.jsonl (other seed?)" >&2
fi
rm -f "$WORK/encoded.pt"

stage "2/6 $BASE -> trainer state (round trip checked)"
$PY $T/import_model.py --model "$BASE" --out "$WORK/base.pt"

stage "3/6 T2T training: M2T + T2T, $STEPS steps"
$PY $T/train.py t2t "${TRAIN[@]}" --sub-lo 0.0 --sub-hi 0.3 --t2t-weight 1.0 \
  --out "$WORK/t2t.pt" --log "$WORK/t2t.jsonl"
TRAIN_END=$(date +%s)
$PY $T/export.py --state "$WORK/t2t.pt" --kind diffusion --tokenizer "$BASE" --out "$OUT_T2T"
MODELS="$BASE,$OUT_T2T"
if [ "$CONTROL" = 1 ]; then
  stage "3b/6 control: plain SFT, the same $STEPS steps from the same start"
  $PY $T/train.py sft "${TRAIN[@]}" --out "$WORK/sft_control.pt" --log "$WORK/sft_control.jsonl"
  $PY $T/export.py --state "$WORK/sft_control.pt" --kind diffusion --tokenizer "$BASE" \
    --out "$OUT_CONTROL"
  MODELS="$MODELS,$OUT_CONTROL"
fi

stage "4/6 verification: dmoe vs PyTorch (LLaDA2.0 and LLaDA2.1 generate())"
$PY $T/verify.py --dmoe "$DMOE_BIN/dmoe" --ar "$AR" --diffusion "$OUT_T2T" \
  --tasks "$WORK/data/tasks_eval.jsonl" --corpus "$WORK/data/corpus_eval.jsonl" \
  --per-task "$PER_TASK" --editing 0.5/0.0,0.7/0.5 --out "$DOCS/verify_t2t.json"
# The LLaDA2.0 model edits a lot under the presets (re-masks too): the harder test of dmoe's
# editing loop on real weights.
$PY $T/verify.py --dmoe "$DMOE_BIN/dmoe" --ar "$AR" --diffusion "$BASE" \
  --tasks "$WORK/data/tasks_eval.jsonl" --per-task "$PER_TASK" --thresholds 0.9 \
  --editing 0.5/0.0,0.7/0.5 --out "$DOCS/verify_t2t_base.json"

stage "5/6 dmoe eval: --editing off | speed | quality"
$PY $T/editing.py --dmoe "$DMOE_BIN/dmoe" --models "$MODELS" \
  --tasks "$WORK/data/tasks_eval.jsonl" --limit "$LIMIT" --threads "$THREADS" --out "$DOCS/editing"
ARGS=(--t2t "$WORK/t2t.jsonl" --out "$DOCS/t2t_curves.png")
[ "$CONTROL" = 1 ] && ARGS+=(--control "$WORK/sft_control.jsonl")
$PY $T/plots.py t2t "${ARGS[@]}"

stage "6/6 model card"
END=$(date +%s)
$PY - "$WORK/timings.json" "$START" "$TRAIN_END" "$END" "$PRESET" <<'EOF'
import json, os, sys
path, start, train_end, end, preset = sys.argv[1], *map(int, sys.argv[2:5]), sys.argv[5]
load = os.getloadavg()
json.dump({"preset": preset, "total_seconds": end - start, "train_seconds": train_end - start,
           "machine": f"{os.cpu_count()} cores, load average at the end {load[0]:.1f}"},
          open(path, "w"), indent=2)
EOF
$PY $T/model_card.py --model "$OUT_T2T" --kind t2t --work "$WORK" --seed "$SEED" \
  --command "tools/train/run_t2t.sh   # PRESET=$PRESET SEED=$SEED THREADS=$THREADS" \
  --editing "$DOCS/editing.json" --verify "$DOCS/verify_t2t.json"
cp "$WORK/timings.json" "$DOCS/timings_t2t.json"
stage "done in $(( (END - START) / 60 )) min $(( (END - START) % 60 )) s: $OUT_T2T, $DOCS/editing.*"
