"""Launch-bound training throughput of one process, for deciding how to pack N runs on one GPU.

A 6-layer, 384-wide encoder (MiniLM's shape) trained at batch 16 x 64 tokens with AdamW: the same
many-small-kernels regime as the study's runs. Prints one line: steps/s of this process.
"""

import sys
import time

import torch
from torch import nn

steps = int(sys.argv[1]) if len(sys.argv) > 1 else 200
torch.manual_seed(0)
dev = torch.device("cuda")
layer = nn.TransformerEncoderLayer(384, 12, 1536, batch_first=True)
model = nn.Sequential(nn.TransformerEncoder(layer, 6, enable_nested_tensor=False), nn.Flatten(1)).to(dev)
opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
x = torch.randn(16, 64, 384, device=dev)


def step():
    loss = model(x).square().mean()
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


for _ in range(20):
    step()
torch.cuda.synchronize()
t = time.perf_counter()
for _ in range(steps):
    step()
torch.cuda.synchronize()
print(f"{steps / (time.perf_counter() - t):.1f}")
