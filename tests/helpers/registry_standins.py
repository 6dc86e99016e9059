"""Stand-ins for the real profile's registry downloads, made here: a package index served from a folder on
localhost (PEP 691 JSON), a tiny llama GGUF written with the `gguf` package (Q4_1 tensors included), a tiny
wheel that ships it, and a tiny `bigbench` sdist with BIG-bench JSON task files."""

import hashlib
import io
import json
import tarfile
import threading
import zipfile
from contextlib import contextmanager
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from helpers.standins import byte_level_tokenizer

WORDS = ["apple", "river", "stone", "cloud", "seven", "green", "horse", "music", "paper", "light", "north", "table"]


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class _IndexHandler(SimpleHTTPRequestHandler):
    """`/simple/<name>/` answers the JSON listing of `<root>/<name>/`; `/files/<file>` serves the file."""

    def do_GET(self):  # noqa: N802 -- http.server's name
        parts = [p for p in self.path.split("/") if p]
        if len(parts) == 2 and parts[0] == "simple":
            folder = Path(self.directory) / parts[1]
            if not folder.is_dir():
                self.send_error(404)
                return
            files = [{"filename": f.name, "url": f"/files/{parts[1]}/{f.name}", "hashes": {"sha256": sha256(f)}}
                     for f in sorted(folder.iterdir())]
            body = json.dumps({"meta": {"api-version": "1.0"}, "name": parts[1], "files": files}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/vnd.pypi.simple.v1+json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if parts and parts[0] == "files":
            self.path = "/" + "/".join(parts[1:])
        super().do_GET()

    def log_message(self, *args):
        pass


@contextmanager
def local_index(root: Path):
    """A package index on localhost serving `root/<normalized name>/<distribution files>`."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_IndexHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/simple"
    finally:
        server.shutdown()
        server.server_close()


# --- a tiny llama as a GGUF file ---------------------------------------------------------------------------

def tiny_llama(seed: int = 0):
    """A random 2-layer llama with GQA (4 query heads sharing 2 key/value heads) and its byte-level BPE."""
    texts = [" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))] * 4
    tok = byte_level_tokenizer(texts, vocab_size=300)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=True,
                         bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval(), tok


def _llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's reordering of q/k rows (convert_hf_to_gguf.py); transformers undoes it when it reads."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


GGUF_NAMES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
              "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
              "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}


def write_gguf(model, tok, path: Path) -> Path:
    """The model in llama.cpp's format: matrices quantized to Q4_1, norms in F32, a GPT-2-style vocabulary."""
    import gguf

    c = model.config
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_vocab_size(c.vocab_size)
    backend = json.loads(tok.backend_tokenizer.to_str())
    vocab = sorted(backend["model"]["vocab"].items(), key=lambda kv: kv[1])
    merges = [m if isinstance(m, str) else " ".join(m) for m in backend["model"]["merges"]]
    w.add_tokenizer_model("gpt2")
    w.add_token_list([t for t, _ in vocab])
    w.add_token_types([3 if t == tok.eos_token else 1 for t, _ in vocab])
    w.add_token_merges(merges)
    w.add_bos_token_id(tok.eos_token_id)
    w.add_eos_token_id(tok.eos_token_id)
    w.add_add_bos_token(False)
    q4 = gguf.GGMLQuantizationType.Q4_1
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight":
            continue  # tied to the embedding
        arr = tensor.detach().float().numpy()
        if name == "model.embed_tokens.weight":
            gname = "token_embd.weight"
        elif name == "model.norm.weight":
            gname = "output_norm.weight"
        else:
            _, _, layer, *rest = name.split(".")
            module = ".".join(rest[:-1])
            gname = f"blk.{layer}.{GGUF_NAMES[module]}.weight"
            if module == "self_attn.q_proj":
                arr = _llama_cpp_permute(arr, c.num_attention_heads)
            elif module == "self_attn.k_proj":
                arr = _llama_cpp_permute(arr, c.num_key_value_heads)
        if arr.ndim == 2:
            packed = gguf.quants.quantize(arr, q4)  # uint8 blocks; the writer reads the shape from the bytes
            w.add_tensor(gname, packed, raw_shape=packed.shape, raw_dtype=q4)
        else:
            w.add_tensor(gname, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_wheel(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


# --- a tiny bigbench sdist -----------------------------------------------------------------------------------

def _mc_examples(rng, n: int, n_choices: int, with_target: bool = False) -> list[dict]:
    out = []
    for _ in range(n):
        choices = list(rng.choice(WORDS, n_choices, replace=False))
        gold = int(rng.integers(n_choices))
        ex = {"input": " ".join(rng.choice(WORDS, 4)) + "?",
              "target_scores": {c: int(i == gold) for i, c in enumerate(choices)}}
        if with_target:
            ex["target"] = choices[gold]
        out.append(ex)
    return out


def bigbench_tasks(seed: int = 0) -> dict[str, dict]:
    """Task files under their archive paths: a plain task, one with a task prefix and its own prefixes,
    one made of two subtasks, one scored by lm-eval's template_b, and a generative one."""
    rng = np.random.default_rng(seed)
    base = {"canary": "x", "description": "d", "keywords": ["k"], "metrics": ["multiple_choice_grade"],
            "preferred_score": "multiple_choice_grade"}
    root = "bigbench/benchmark_tasks"
    tasks = {
        f"{root}/general_knowledge/task.json": {**base, "name": "general_knowledge",
                                                "examples": _mc_examples(rng, 14, 4)},
        f"{root}/hyperbaton/task.json": {**base, "name": "hyperbaton", "task_prefix": "Pick one.",
                                         "example_input_prefix": "\nInput: ", "example_output_prefix": "\nOut: ",
                                         "append_choices_to_input": False, "examples": _mc_examples(rng, 12, 2)},
        f"{root}/arithmetic/task.json": {**{k: v for k, v in base.items() if k not in ("metrics", "preferred_score")},
                                         "name": "arithmetic"},
        f"{root}/arithmetic/1_digit_addition/task.json": {**base, "name": "1_digit_addition",
                                                          "examples": _mc_examples(rng, 8, 3, with_target=True)},
        f"{root}/arithmetic/2_digit_addition/task.json": {**base, "name": "2_digit_addition",
                                                          "examples": _mc_examples(rng, 8, 3)},
        f"{root}/strategyqa/task.json": {**base, "name": "strategyqa", "examples": _mc_examples(rng, 12, 2)},
        f"{root}/cause_and_effect/task.json": {**base, "name": "cause_and_effect", "metrics": ["exact_str_match"],
                                               "preferred_score": "exact_str_match",
                                               "examples": [{"input": "a", "target": "b"}] * 3},
    }
    first = tasks[f"{root}/general_knowledge/task.json"]["examples"]
    first.append(dict(first[0]))  # a repeated example, which JsonTask drops
    return tasks


def write_sdist(path: Path, files: dict[str, bytes], top: str = "bigbench-1.0.0") -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path
