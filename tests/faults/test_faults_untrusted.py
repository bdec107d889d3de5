"""Files rlft reads but did not write itself: a compiled-kernel cache another user could write to, a
reference-log-prob cache that is corrupt or foreign, model directories that ask for custom code or hold
no model. None of them may run code, and each ends in one line naming the file, never a traceback."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import struct
from pathlib import Path

import pytest
import torch
from micro_models import perturbed_llama
from safetensors.torch import load as load_safetensors
from safetensors.torch import save_file

import rlft.cli
from rlft.models import CustomCodeError, ModelError, load_causal_lm, load_reward_model, load_tokenizer
from rlft.models.fused import kernels as K
from rlft.models.hf import load_error
from rlft.train.preference.ref_cache import reference_logprob_sums

BOGUS_LIBRARY = b"\x7fELF but not a shared library: loading this must never be attempted\n"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- the compiled-kernel cache ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def good_library(tmp_path_factory) -> Path:
    """A copy of a decode-kernel library compiled by rlft (from the default cache, built once there)."""
    if K._compiler() is None:
        pytest.skip("no C compiler: rlft runs on its torch fallback here")
    copy = tmp_path_factory.mktemp("good-kernels") / "decode.so"
    shutil.copyfile(K.build(), copy)
    return copy


@pytest.fixture
def kernel_cache(tmp_path, monkeypatch, good_library):
    """An empty ``$RLFT_CACHE``, a compiler stand-in that copies ``good_library`` (counting its calls) and a
    record of the SHA-256 of every library ``ctypes.CDLL`` opens."""
    monkeypatch.setenv("RLFT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("RLFT_KERNELS", raising=False)
    compiled: list[Path] = []
    loaded: list[str] = []

    def compile_copy(cc, source, out):
        shutil.copyfile(good_library, out)
        compiled.append(out)

    real_cdll = K.ctypes.CDLL

    def recording_cdll(name, *args, **kwargs):
        loaded.append(_sha256(Path(name)))
        return real_cdll(name, *args, **kwargs)

    monkeypatch.setattr(K, "_compile", compile_copy)
    monkeypatch.setattr(K.ctypes, "CDLL", recording_cdll)
    target = tmp_path / "cache" / "kernels" / K._library_name(K._compiler(), K.SOURCE)
    return {"target": target, "compiled": compiled, "loaded": loaded}


def _plant(target: Path, how: str, monkeypatch) -> None:
    """Put a bogus library at ``target`` in one of the ways another user (or a stale build) could."""
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    digest = target.with_suffix(".sha256")
    target.write_bytes(BOGUS_LIBRARY)
    target.chmod(0o644)
    digest.write_text(hashlib.sha256(BOGUS_LIBRARY).hexdigest() + "\n")
    digest.chmod(0o644)
    if how == "world-writable":
        target.chmod(0o666)
    elif how == "group-writable sidecar":
        digest.chmod(0o664)
    elif how == "wrong hash":
        digest.write_text("0" * 64 + "\n")
    elif how == "no sidecar":
        digest.unlink()
    elif how == "symlink":
        elsewhere = target.parent.parent / "elsewhere.so"
        target.rename(elsewhere)
        target.symlink_to(elsewhere)
    elif how == "foreign owner":
        real_lstat = os.lstat

        def lstat(path, *args, **kwargs):
            info = real_lstat(path, *args, **kwargs)
            if Path(path) != target:
                return info
            fields = list(info[:10])
            fields[4] = os.getuid() + 1  # st_uid
            return os.stat_result(fields)

        monkeypatch.setattr(os, "lstat", lstat)
    else:
        raise ValueError(how)


@pytest.mark.parametrize(
    "how",
    ["world-writable", "group-writable sidecar", "wrong hash", "no sidecar", "symlink", "foreign owner"],
)
def test_a_planted_kernel_library_is_rebuilt_not_loaded(kernel_cache, good_library, how, monkeypatch, capsys):
    target = kernel_cache["target"]
    _plant(target, how, monkeypatch)
    lib = K.load(K.SOURCE, K._declare, K._self_check)
    assert lib is not None, K.unavailable_reason()
    good = _sha256(good_library)
    assert kernel_cache["loaded"] == [good]  # only the fresh build was ever opened
    assert len(kernel_cache["compiled"]) == 1
    assert not target.is_symlink() and _sha256(target) == good
    assert target.with_suffix(".sha256").read_text().strip() == good
    assert os.lstat(target).st_mode & 0o022 == 0
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and str(target) in lines[0] and "rebuilding" in lines[0], lines


def test_a_recorded_build_is_reused_and_the_cache_is_private(kernel_cache, good_library, capsys):
    first = K.build()
    assert first == kernel_cache["target"] and len(kernel_cache["compiled"]) == 1
    assert K.build() == first and len(kernel_cache["compiled"]) == 1  # trusted: no second compile
    assert (first.parent.stat().st_mode & 0o777) == 0o700
    assert capsys.readouterr().err == ""


def test_a_cache_dir_open_to_others_is_narrowed_to_its_owner(kernel_cache):
    directory = kernel_cache["target"].parent
    directory.mkdir(parents=True)
    directory.chmod(0o777)
    K.build()
    assert (directory.stat().st_mode & 0o777) == 0o700


def test_a_cache_dir_of_another_user_is_not_used(kernel_cache, monkeypatch, capsys):
    kernel_cache["target"].parent.mkdir(parents=True)
    monkeypatch.setattr(os, "getuid", lambda: os.geteuid() + 1)
    assert K.load(K.SOURCE, K._declare, K._self_check) is None
    assert kernel_cache["loaded"] == [] and kernel_cache["compiled"] == []
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and "not to this user" in lines[0] and "PyTorch path" in lines[0], lines


# --- the reference-log-prob cache ----------------------------------------------------------------------------


class _WritesMarker:
    """Unpickling this runs ``Path(marker).write_text(...)``: what a planted pickle could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "code from a cache file ran"))


@pytest.fixture(scope="module")
def reference():
    """An in-memory micro Llama and six scored sequences (three prompt pairs)."""
    sequences = [([1, 2, 3], [4, 5]), ([1, 2, 3], [6]), ([7, 8], [9, 10, 11]), ([7, 8], [12]), ([13], [14])]
    sequences.append(([15, 16], [17, 18]))
    return perturbed_llama(seed=1), sequences


def _cached(reference, cache: Path) -> tuple[torch.Tensor, list[str]]:
    model, sequences = reference
    logs: list[str] = []
    values = reference_logprob_sums(model, sequences, 0, cache_dir=cache, log=logs.append)
    return values, logs


def _entry_of(data: bytes) -> tuple[dict, list[float]]:
    """(metadata, log-probs) of a safetensors cache file's bytes (its header's key order is arbitrary)."""
    header_size = struct.unpack("<Q", data[:8])[0]
    metadata = json.loads(data[8 : 8 + header_size])["__metadata__"]
    return metadata, load_safetensors(data)["logps"].tolist()


def _entry(file: Path) -> tuple[dict, list[float]]:
    return _entry_of(file.read_bytes())


def _safetensors_bytes(tmp_path: Path, tensors: dict, metadata: dict) -> bytes:
    scratch = tmp_path / "scratch.safetensors"
    save_file(tensors, str(scratch), metadata=metadata)
    return scratch.read_bytes()


def _corruptions(valid: bytes, tmp_path: Path, marker: Path) -> dict[str, bytes]:
    metadata, _ = _entry_of(valid)
    logps = torch.zeros(6)
    return {
        "truncated": valid[: len(valid) // 2],
        "empty": b"",
        "random bytes": bytes(range(256)) * 3,
        "code-running pickle": pickle.dumps({"logps": _WritesMarker(marker)}),
        "another key": _safetensors_bytes(tmp_path, {"logps": logps}, {**metadata, "key": "0" * 64}),
        "another length": _safetensors_bytes(tmp_path, {"logps": torch.zeros(5)}, {**metadata, "count": "5"}),
        "another tensor": _safetensors_bytes(tmp_path, {"weights": logps}, metadata),
        "no metadata": _safetensors_bytes(tmp_path, {"logps": logps}, {}),
        "float64 values": _safetensors_bytes(tmp_path, {"logps": logps.double()}, metadata),
    }


def test_a_bad_reference_cache_file_is_recomputed_and_overwritten(reference, tmp_path):
    cache = tmp_path / "ref-cache"
    want, _ = _cached(reference, cache)
    (file,) = list(cache.iterdir())
    valid = file.read_bytes()
    marker = tmp_path / "marker"
    for name, data in _corruptions(valid, tmp_path, marker).items():
        file.write_bytes(data)
        got, logs = _cached(reference, cache)
        assert torch.equal(got, want), name
        assert len(logs) == 2 and "ignored" in logs[0] and str(file) in logs[0], (name, logs)
        assert "\n" not in logs[0] and "computed" in logs[1], (name, logs)
        assert _entry(file) == _entry_of(valid), name  # overwritten with a valid entry
        assert [p.name for p in cache.iterdir()] == [file.name], name  # no temp file left
        assert not marker.exists(), name
    _, logs = _cached(reference, cache)
    assert len(logs) == 1 and "from cache" in logs[0]


def test_the_reference_cache_never_unpickles(reference, tmp_path, monkeypatch):
    cache = tmp_path / "ref-cache"
    _cached(reference, cache)

    def refuse(*args, **kwargs):
        raise AssertionError("pickle used to read a cache file")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    _, logs = _cached(reference, cache)
    assert "from cache" in logs[0]


# --- model directories ---------------------------------------------------------------------------------------


def _custom_code_dir(root: Path, marker: Path, **config) -> Path:
    """A model directory whose config points transformers at ``evil.py``, which writes ``marker``."""
    root.mkdir()
    (root / "evil.py").write_text(f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n")
    auto_map = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}
    (root / "config.json").write_text(json.dumps({"auto_map": auto_map, **config}))
    return root


@pytest.mark.parametrize("model_type", ["evil", None])
def test_a_model_asking_for_custom_code_is_refused_in_one_line(tmp_path, model_type):
    marker = tmp_path / "marker"
    config = {} if model_type is None else {"model_type": model_type}
    model_dir = _custom_code_dir(tmp_path / "model", marker, **config)
    for load in (load_causal_lm, load_tokenizer, load_reward_model):
        with pytest.raises(CustomCodeError) as err:
            load(str(model_dir))
        text = str(err.value)
        assert "\n" not in text and text.startswith(f"{model_dir}: its config asks for custom code"), text
        assert "auto_map" in text and "rlft never runs code from a model directory" in text
    assert not marker.exists()


def test_a_tokenizer_asking_for_custom_code_is_refused(tmp_path):
    marker = tmp_path / "marker"
    tok_dir = tmp_path / "tok"
    tok_dir.mkdir()
    (tok_dir / "evil.py").write_text(f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n")
    config = {"auto_map": {"AutoTokenizer": ["evil.EvilTokenizer", None]}, "tokenizer_class": "EvilTokenizer"}
    (tok_dir / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(CustomCodeError, match="its config asks for custom code"):
        load_tokenizer(str(tok_dir))
    assert not marker.exists()


def test_transformers_custom_code_errors_become_one_line():
    err = ValueError("The repository x/y contains custom code ...\nPlease pass `trust_remote_code=True` ...")
    converted = load_error("x/y", "model", err)
    assert isinstance(converted, CustomCodeError) and "\n" not in str(converted)


def test_an_unknown_model_type_is_named(tmp_path):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps({"model_type": "not-an-architecture"}))
    with pytest.raises(ModelError, match=r"model_type 'not-an-architecture' is unknown to transformers"):
        load_causal_lm(str(model_dir))


@pytest.mark.parametrize("kind", ["empty dir", "no config.json", "missing", "a file", "bad json"])
def test_a_path_without_a_model_is_one_line(tmp_path, kind):
    path = tmp_path / "model"
    expected = {
        "empty dir": "the directory is empty",
        "no config.json": "no config.json in the directory",
        "missing": "expected a Hugging Face model directory",
        "a file": "it is a file",
        "bad json": "not a readable JSON config",
    }[kind]
    if kind == "a file":
        path.write_text("weights?")
    elif kind != "missing":
        path.mkdir()
    if kind == "no config.json":
        (path / "model.safetensors").write_bytes(b"")
    if kind == "bad json":
        (path / "config.json").write_text("{not json")
    for load in (load_causal_lm, load_reward_model):
        with pytest.raises(ModelError) as err:
            load(str(path))
        assert "\n" not in str(err.value) and str(path) in str(err.value) and expected in str(err.value)


def test_the_cli_prints_one_line_for_a_custom_code_model(tmp_path, capsys):
    model_dir = _custom_code_dir(tmp_path / "model", tmp_path / "marker", model_type="evil")
    code = rlft.cli.main(["generate", "--model", str(model_dir), "--task", "arithmetic"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith(f"rlft: error: {model_dir}: its config asks")
    assert not (tmp_path / "marker").exists()
