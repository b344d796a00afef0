#!/usr/bin/env python3
"""PyTorch CPU reference for ratchet's built-in "tinylm" model and training step.

Same architecture as src/tinylm/model.rs (learned positions, LayerNorm, GELU,
tied embeddings) and the same AdamW + global-norm clipping step as
src/tinylm/train.rs, so tokens/s can be compared side by side. Data is a
seeded random byte stream (throughput only; the loss is not comparable to
ratchet's generated mix).

Prints NAME=value lines: torch_version, threads, params, steps,
train_tokens_per_sec, final_loss.
"""
import argparse
import math
import os
import time
import warnings

# torch warns on import when numpy is absent; numpy is not needed here.
warnings.filterwarnings("ignore", message="Failed to initialize NumPy")

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

VOCAB = 256


class Block(nn.Module):
    def __init__(self, width, heads, hidden, seq_len, gelu):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width, eps=1e-5)
        self.qkv = nn.Linear(width, 3 * width, bias=True)
        self.proj = nn.Linear(width, width, bias=True)
        self.norm2 = nn.LayerNorm(width, eps=1e-5)
        self.fc1 = nn.Linear(width, hidden, bias=True)
        self.fc2 = nn.Linear(hidden, width, bias=True)
        self.gelu = gelu
        mask = torch.full((seq_len, seq_len), float("-inf")).triu(1)
        self.register_buffer("mask", mask, persistent=False)

    def attention(self, x):
        b, t, w = x.shape
        nh = self.heads
        hd = w // nh
        qkv = self.qkv(x).reshape(b, t, 3, nh, hd)
        q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))  # (b, nh, t, hd)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hd))
        att = att + self.mask[:t, :t]
        att = torch.softmax(att, dim=-1)
        y = (att @ v).transpose(1, 2).reshape(b, t, w)
        return self.proj(y)

    def forward(self, h):
        h = h + self.attention(self.norm1(h))
        m = F.gelu(self.fc1(self.norm2(h)), approximate=self.gelu)
        return h + self.fc2(m)


class Gpt(nn.Module):
    def __init__(self, layers, width, heads, seq_len, mlp_ratio, gelu):
        super().__init__()
        assert width % heads == 0, "width must be divisible by heads"
        hidden = int(round(width * mlp_ratio))
        self.wte = nn.Parameter(torch.empty(VOCAB, width))
        self.wpe = nn.Parameter(torch.empty(seq_len, width))
        self.blocks = nn.ModuleList(Block(width, heads, hidden, seq_len, gelu) for _ in range(layers))
        self.norm_f = nn.LayerNorm(width, eps=1e-5)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self):
        nn.init.normal_(self.wte, 0.0, 0.02)
        nn.init.normal_(self.wpe, 0.0, 0.02)
        for mod in self.modules():
            if isinstance(mod, nn.Linear):
                nn.init.normal_(mod.weight, 0.0, 0.5 / math.sqrt(mod.in_features))
                nn.init.zeros_(mod.bias)
            elif isinstance(mod, nn.LayerNorm):
                nn.init.ones_(mod.weight)
                nn.init.zeros_(mod.bias)

    def forward(self, x):
        t = x.shape[1]
        h = self.wte[x] + self.wpe[:t]
        for block in self.blocks:
            h = block(h)
        h = self.norm_f(h)
        return h @ self.wte.t()  # tied embeddings, no head bias


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--mlp-ratio", type=float, default=4.0)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--beta1", type=float, default=0.9)
    p.add_argument("--beta2", type=float, default=0.99)
    p.add_argument("--eps", type=float, default=1e-8)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--grad-clip", type=float, default=1.0, help="global grad-norm clip; 0 = off")
    p.add_argument("--gelu", choices=["none", "tanh"], default="none",
                   help="GELU form: none = exact erf (default), tanh = tanh approximation")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--secs", type=float, default=20.0)
    p.add_argument("--warmup-steps", type=int, default=5, help="untimed steps before the timed run")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    torch.set_default_dtype(torch.float32)

    model = Gpt(a.layers, a.width, a.heads, a.seq_len, a.mlp_ratio, a.gelu)
    params = sum(q.numel() for q in model.parameters())

    decay = [q for q in model.parameters() if q.ndim >= 2]  # incl. wte, wpe
    no_decay = [q for q in model.parameters() if q.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": a.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=a.lr, betas=(a.beta1, a.beta2), eps=a.eps, foreach=True,
    )

    # Deterministic 1 MiB random byte stream, seeded.
    gen = torch.Generator().manual_seed(a.seed)
    data = torch.randint(0, VOCAB, (1 << 20,), generator=gen, dtype=torch.int64)
    offsets = torch.arange(a.seq_len + 1)

    def batch():
        starts = torch.randint(0, data.numel() - a.seq_len - 1, (a.batch_size, 1), generator=gen)
        win = data[starts + offsets]  # (B, T+1)
        return win[:, :-1], win[:, 1:]

    def step():
        x, y = batch()
        logits = model(x)
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if a.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), a.grad_clip)
        opt.step()
        return loss

    model.train()
    for _ in range(a.warmup_steps):
        step()

    steps = 0
    loss = None
    t0 = time.perf_counter()
    while True:
        loss = step()
        steps += 1
        if time.perf_counter() - t0 >= a.secs:
            break
    elapsed = time.perf_counter() - t0
    tokens = steps * a.batch_size * a.seq_len

    print(f"torch_version={torch.__version__}")
    print(f"threads={torch.get_num_threads()}")
    print(f"params={params}")
    print(f"steps={steps}")
    print(f"train_tokens_per_sec={tokens / elapsed:.1f}")
    print(f"final_loss={loss.item():.4f}")


if __name__ == "__main__":
    main()
