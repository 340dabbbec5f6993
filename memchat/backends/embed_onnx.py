"""The embedder's forward pass on ONNX Runtime, for the serving-size batches of live turns.

Why our own: on the 2-core machine, one thread, all-MiniLM-L6-v2, one 27-token text takes 18.1 ms in PyTorch
eager and 8.5 ms on ONNX Runtime (three texts: 32.0 vs 20.4 ms), with outputs equal to 2e-6; under
``memchat bench load`` the embedder was ~24 % of the server's CPU samples. sentence-transformers'
own ``backend="onnx"`` needs optimum-onnx, which pins transformers < 4.58 (memchat runs 5.x), so the model is
exported here with ``torch.onnx.export`` once per model file (cached under ``~/.cache/memchat/onnx``, or
``$XDG_CACHE_HOME``), and pooling (mean or CLS) and normalisation are done as the sentence-transformers
pipeline does them. A load-time check against ``SentenceTransformer.encode`` on probe texts (one longer than
the model's window) turns the ONNX path off, with a log line, on any difference; so does any error.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("memchat.embeddings")

CHUNK = 16  # texts per ONNX run, sorted by length so that short queries are not padded to a long reply
TOLERANCE = 1e-4  # largest difference from SentenceTransformer.encode accepted at load
PROBES = ["Hi!", "[2023-05-08] Caroline: I went to a support group yesterday and it was so powerful.",
          "我对花生过敏，订单号是 A-1029。", " ".join(["a long line that runs past the model's window"] * 80)]


def cache_dir() -> Path:
    """Where exported models are kept (shared by every data directory and worker on the machine)."""
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "memchat" / "onnx"


class OnnxEncoder:
    """Tokenizer + ONNX Runtime session + pooling: ``encode(texts)`` as ``SentenceTransformer.encode`` with
    ``normalize_embeddings=True`` returns it (float32 rows)."""

    def __init__(self, session: Any, tokenizer: Any, max_len: int, inputs: list[str], pooling: str) -> None:
        self.session, self.tokenizer, self.max_len = session, tokenizer, max_len
        self.inputs, self.pooling = inputs, pooling

    def encode(self, texts: list[str]) -> np.ndarray:
        """Embeddings of ``texts``, in their order."""
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out: list[np.ndarray] = [np.empty(0)] * len(texts)
        for start in range(0, len(order), CHUNK):
            idx = order[start:start + CHUNK]
            for i, v in zip(idx, self._run([texts[i] for i in idx]), strict=True):
                out[i] = v
        return np.stack(out) if out else np.zeros((0, 0), dtype=np.float32)

    def _run(self, texts: list[str]) -> np.ndarray:
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_len, return_tensors="np")
        hidden = self.session.run(None, {k: np.asarray(enc[k], dtype=np.int64) for k in self.inputs})[0]
        mask = np.asarray(enc["attention_mask"], dtype=np.float32)[..., None]
        if self.pooling == "cls":
            vec = hidden[:, 0]
        else:
            vec = (hidden * mask).sum(1) / np.clip(mask.sum(1), 1e-9, None)
        vec = vec / np.clip(np.linalg.norm(vec, axis=1, keepdims=True), 1e-12, None)
        return np.asarray(vec, dtype=np.float32)


def _pipeline(model: Any) -> tuple[Any, Any, str] | None:
    """(transformer network, tokenizer, pooling) for a plain Transformer → Pooling (→ Normalize)."""
    mods = list(model)
    names = [type(m).__name__ for m in mods]
    if names[:2] != ["Transformer", "Pooling"] or names[2:] not in ([], ["Normalize"]):
        return None
    pooling = str(mods[1].get_config_dict().get("pooling_mode", ""))
    if pooling not in ("mean", "cls"):
        return None
    return mods[0].model, mods[0].tokenizer, pooling


def _export(net: Any, tokenizer: Any, path: Path) -> list[str]:
    """Export the transformer to ``path`` (atomically: workers may export at once); returns its input names."""
    import torch

    sample = tokenizer(PROBES[:2], padding=True, return_tensors="pt")
    inputs = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in sample]

    class Hidden(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, *args: Any) -> Any:
            return self.net(**dict(zip(inputs, args, strict=True))).last_hidden_state

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.stem, suffix=".onnx.tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o644)  # mkstemp makes it 0600
    try:
        with warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore")
            torch.onnx.export(Hidden().eval(), tuple(sample[k] for k in inputs), tmp, input_names=inputs,
                              output_names=["hidden"], opset_version=17, dynamo=False,
                              dynamic_axes={k: {0: "batch", 1: "tokens"} for k in [*inputs, "hidden"]})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return inputs


def _key(source: str) -> str:
    """Cache key of a model directory: its path, the size and time of its weight files, the torch version."""
    import torch

    p = Path(source)
    files = sorted(f for f in p.rglob("*") if f.suffix in (".safetensors", ".bin")) if p.is_dir() else []
    parts = [str(p.resolve()), torch.__version__, *(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}"
                                                    for f in files)]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:20]


def onnx_encoder(model: Any, source: str) -> OnnxEncoder | None:
    """An ONNX Runtime encoder equivalent to ``model`` (a loaded SentenceTransformer from ``source``), or None
    (onnxruntime missing, another architecture, an export error, or outputs that differ)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    parts = _pipeline(model)
    if parts is None:
        log.info("embedder: ONNX Runtime not used (not a Transformer + mean/CLS pooling pipeline)")
        return None
    net, tokenizer, pooling = parts
    path = cache_dir() / f"{_key(source)}.onnx"
    try:
        sample = tokenizer(PROBES[:1], return_tensors="np")
        inputs = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in sample]
        if not path.exists():
            inputs = _export(net, tokenizer, path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = 1  # serving-size batches: see embeddings._encode
        opts.log_severity_level = 3
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        enc = OnnxEncoder(session, tokenizer, int(model.max_seq_length or 512), inputs, pooling)
        want = model.encode(PROBES, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
        diff = float(np.abs(enc.encode(PROBES) - np.asarray(want, dtype=np.float32)).max())
    except Exception as exc:  # noqa: BLE001 - any failure keeps the PyTorch path
        log.warning("embedder: ONNX Runtime not used (%s: %s)", type(exc).__name__, exc)
        return None
    if diff > TOLERANCE:
        log.warning("embedder: ONNX Runtime not used (differs from sentence-transformers by %.2g)", diff)
        return None
    return enc
