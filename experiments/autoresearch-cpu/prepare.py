"""
Fixed data preparation, tokenizer, dataloader and evaluation for a CPU-sized
autoresearch run. Same shape as karpathy/autoresearch's prepare.py, but
nothing is downloaded: the text is generated from a seeded story grammar,
and the tokenizer is byte-level (vocab 256, so bits per token == bits per byte).

Usage:
    python prepare.py      # print dataset facts and a sample
"""

import math
import os
import random

import torch

# ---------------------------------------------------------------------------
# Constants (fixed, do not modify)
# ---------------------------------------------------------------------------

MAX_SEQ_LEN = 128        # context length
TIME_BUDGET = float(os.environ.get("RATCHET_BUDGET_SECS", "60"))  # training time budget in seconds
EVAL_TOKENS = 16 * 1024  # number of tokens for val eval

DATA_SEED = 1337
NUM_TRAIN_DOCS = 6000
NUM_VAL_DOCS = 600

# ---------------------------------------------------------------------------
# Data: a seeded grammar of tiny stories
# ---------------------------------------------------------------------------

NAMES = ["Tom", "Lily", "Max", "Mia", "Ben", "Sue", "Sam", "Anna", "Leo", "Zoe"]
ANIMALS = ["cat", "dog", "bird", "fox", "rabbit", "frog", "bear", "duck"]
ADJS = ["little", "big", "happy", "sad", "brave", "shy", "kind", "silly", "red", "blue"]
THINGS = ["ball", "kite", "box", "hat", "cake", "book", "boat", "tree", "apple", "drum"]
PLACES = ["park", "garden", "forest", "beach", "house", "river", "hill", "school"]
VERBS = ["play with", "look at", "find", "share", "carry", "paint", "hide", "fix"]
FEELINGS = ["happy", "sad", "scared", "proud", "tired", "excited", "angry", "calm"]


def _story(rng):
    name, friend = rng.sample(NAMES, 2)
    animal, adj = rng.choice(ANIMALS), rng.choice(ADJS)
    thing, thing_adj = rng.choice(THINGS), rng.choice(ADJS)
    place, verb = rng.choice(PLACES), rng.choice(VERBS)
    feel, feel2 = rng.choice(FEELINGS), rng.choice(FEELINGS)
    s = [f"Once upon a time, there was a {adj} {animal} named {name}."]
    s.append(f"{name} liked to {verb} the {thing_adj} {thing}.")
    s.append(f"One day, {name} went to the {place} with {friend}.")
    if rng.random() < 0.5:
        s.append(f"At the {place}, they saw a {rng.choice(ADJS)} {rng.choice(THINGS)}.")
    if rng.random() < 0.5:
        s.append(f"{friend} said, \"Can I {rng.choice(VERBS)} the {thing}?\"")
        if rng.random() < 0.6:
            s.append(f"{name} said, \"Yes, you can!\" and {friend} was {feel}.")
        else:
            s.append(f"{name} said, \"No, it is mine.\" {friend} felt {feel}.")
    else:
        s.append(f"The {thing} was lost, and {name} felt {feel}.")
        s.append(f"{friend} helped {name} find the {thing} near the {rng.choice(PLACES)}.")
    s.append(f"In the end, {name} and {friend} were {feel2}.")
    return " ".join(s)


def _documents(seed, n):
    rng = random.Random(seed)
    return [_story(rng) for _ in range(n)]

# ---------------------------------------------------------------------------
# Tokenizer (byte-level)
# ---------------------------------------------------------------------------

class Tokenizer:
    """Byte-level tokenizer: token id == UTF-8 byte value."""

    @classmethod
    def from_directory(cls):
        return cls()

    def get_vocab_size(self):
        return 256

    def encode(self, text):
        return list(text.encode("utf-8"))

    def decode(self, ids):
        return bytes(ids).decode("utf-8", errors="replace")


def get_token_bytes(device="cpu"):
    return torch.ones(256, dtype=torch.int32, device=device)


def _split_tokens(split):
    tok = Tokenizer()
    if split == "train":
        docs = _documents(DATA_SEED, NUM_TRAIN_DOCS)
    else:
        docs = _documents(DATA_SEED + 1, NUM_VAL_DOCS)
    return torch.tensor(tok.encode("\n".join(docs) + "\n"), dtype=torch.long)


_CACHE = {}

def _tokens(split):
    if split not in _CACHE:
        _CACHE[split] = _split_tokens(split)
    return _CACHE[split]

# ---------------------------------------------------------------------------
# Dataloader
# ---------------------------------------------------------------------------

def make_dataloader(tokenizer, B, T, split, device="cpu"):
    """
    Train: random windows from a seeded generator (deterministic order).
    Val: consecutive non-overlapping windows from the start of the split.
    Yields (inputs, targets, epoch) forever.
    """
    assert split in ["train", "val"]
    data = _tokens(split)
    n = data.numel() - (T + 1)
    gen = torch.Generator().manual_seed(DATA_SEED)
    pos, seen = 0, 0
    while True:
        if split == "train":
            starts = torch.randint(0, n, (B,), generator=gen)
        else:
            if pos + B * T >= n:
                pos = 0
            starts = torch.arange(B) * T + pos
            pos += B * T
        rows = torch.stack([data[s:s + T + 1] for s in starts.tolist()])
        seen += B * T
        epoch = 1 + seen // data.numel()
        yield rows[:, :-1].contiguous().to(device), rows[:, 1:].contiguous().to(device), epoch

# ---------------------------------------------------------------------------
# Evaluation (DO NOT CHANGE — this is the fixed metric)
# ---------------------------------------------------------------------------

@torch.no_grad()
def evaluate_bpb(model, tokenizer, batch_size):
    """
    Bits per byte (BPB): sums per-token cross-entropy (in nats), sums target
    byte lengths, then converts nats/byte to bits/byte. Uses fixed MAX_SEQ_LEN
    and EVAL_TOKENS so results are comparable across configs.
    """
    token_bytes = get_token_bytes()
    val_loader = make_dataloader(tokenizer, batch_size, MAX_SEQ_LEN, "val")
    steps = max(1, EVAL_TOKENS // (batch_size * MAX_SEQ_LEN))
    total_nats = 0.0
    total_bytes = 0
    for _ in range(steps):
        x, y, _ = next(val_loader)
        loss_flat = model(x, y, reduction='none').view(-1)
        nbytes = token_bytes[y.view(-1)]
        mask = nbytes > 0
        total_nats += (loss_flat * mask).sum().item()
        total_bytes += nbytes.sum().item()
    return total_nats / (math.log(2) * total_bytes)


if __name__ == "__main__":
    train, val = _tokens("train"), _tokens("val")
    print(f"Train bytes: {train.numel():,}, val bytes: {val.numel():,}")
    print(f"Time budget: {TIME_BUDGET}s")
    print("Sample:")
    print(Tokenizer().decode(train[:400].tolist()))
