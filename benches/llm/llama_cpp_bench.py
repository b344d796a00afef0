"""llama.cpp's figures for `ratchet bench llm`, on the same file and prompts.

Usage: llama_cpp_bench.py MODEL.gguf REQUESTS.json THREADS FREE_TOKENS

REQUESTS.json holds ratchet's requests (system, user, schema, sampling).
Prints one JSON object as its last line: prompt and reply tokens/s (from
llama.cpp's own performance counters), seconds per proposal decoded under
the request's JSON Schema (llama-cpp-python's `response_format`), and the
replies. Needs `pip install llama-cpp-python`.
"""

import json
import sys
import time

from llama_cpp import Llama
from llama_cpp import llama_cpp as C


def main():
    model, path, threads, free_tokens = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    requests = json.load(open(path))
    llm = Llama(model_path=model, n_ctx=4096, n_threads=threads, n_threads_batch=threads,
                verbose=False, seed=0)

    def messages(r):
        return [{"role": "system", "content": r["system"]}, {"role": "user", "content": r["user"]}]

    def perf():
        p = C.llama_perf_context(llm._ctx.ctx)
        return p.t_p_eval_ms, p.n_p_eval, p.t_eval_ms, p.n_eval

    # Warm-up, then one free-text reply of FREE_TOKENS for decode speed;
    # reset() each time so no prompt prefix is reused from the call before.
    llm.reset()
    llm.create_chat_completion(messages(requests[0]), max_tokens=8)
    llm.reset()
    C.llama_perf_context_reset(llm._ctx.ctx)
    llm.create_chat_completion(messages(requests[0]), max_tokens=free_tokens, temperature=0.7)
    tp, np_, te, ne = perf()
    replies, total = [], 0.0
    for i, r in enumerate(requests):
        llm.reset()
        C.llama_perf_context_reset(llm._ctx.ctx)
        t0 = time.time()
        out = llm.create_chat_completion(
            messages(r), max_tokens=r["sampling"]["max_tokens"],
            temperature=r["sampling"]["temperature"], top_p=r["sampling"]["top_p"],
            seed=r["sampling"]["seed"],
            response_format={"type": "json_object", "schema": r["schema"]})
        secs = time.time() - t0
        total += secs
        text = out["choices"][0]["message"]["content"] or ""
        replies.append(text)
        p = perf()
        print(f"  llama.cpp proposal {i + 1}: {p[1]} prompt tokens at {p[1] / (p[0] / 1000):.0f}/s, "
              f"{p[3]} reply tokens at {p[3] / max(p[2] / 1000, 1e-9):.1f}/s, {secs:.1f} s")
    print(json.dumps({
        "prompt_tps": np_ / (tp / 1000),
        "reply_tps": ne / (te / 1000),
        "secs_per_proposal": total / len(requests),
        "replies": replies,
    }))


if __name__ == "__main__":
    main()
