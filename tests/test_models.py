import pickle

import pytest
import torch
from safetensors.torch import save_file

from clip_unlearn.core.clip_ops import encode_text
from clip_unlearn.core.models import WEIGHTS_FILE, file_sha256, load_model, save_model


@pytest.fixture(scope="module")
def tiny_bundle():
    torch.manual_seed(0)
    return load_model("clip-ref-tiny", device="cpu")


def outputs(bundle):
    torch.manual_seed(1)
    x = torch.randn(2, 3, 32, 32)
    tokens = bundle.tokenizer(["a red seven", "a small striped star"])
    with torch.no_grad():
        return bundle.model.encode_image(x), bundle.model.encode_text(tokens)


def test_checkpoint_round_trip(tiny_bundle, tmp_path):
    out = save_model(tiny_bundle, tmp_path / "m", meta={"note": "x"})
    assert sorted(p.name for p in out.iterdir()) == ["open_clip_config.json", WEIGHTS_FILE]
    for name in (str(out), f"local-dir:{out}"):
        loaded = load_model(name, device="cpu")
        assert loaded.meta["note"] == "x" and loaded.meta["sha256"] == file_sha256(out / WEIGHTS_FILE)
        for a, b in zip(outputs(tiny_bundle), outputs(loaded)):
            assert torch.equal(a, b)


def test_arch_with_local_weights_file(tiny_bundle, tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_bundle.model.state_dict().items()}, str(path))
    loaded = load_model("clip-ref-tiny", pretrained=str(path), device="cpu")
    assert torch.equal(outputs(tiny_bundle)[0], outputs(loaded)[0])
    pt = tmp_path / "w.pt"  # a plain state dict loads with weights_only=True
    torch.save(tiny_bundle.model.state_dict(), pt)
    assert torch.equal(outputs(tiny_bundle)[1], outputs(load_model("clip-ref-tiny", pretrained=str(pt)))[1])


class Exploit:
    def __reduce__(self):
        return (print, ("this ran at load time",))


def test_refuses_pickles_and_corrupt_files(tiny_bundle, tmp_path):
    out = save_model(tiny_bundle, tmp_path / "m")
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as f:  # an arbitrary object: torch's weights-only loader must refuse it
        pickle.dump({"weight": Exploit()}, f)
    with pytest.raises(Exception, match="(?i)weights.only|unpickl|unsupported"):
        load_model("clip-ref-tiny", pretrained=str(evil))
    with pytest.raises(ValueError, match="unsupported checkpoint format"):
        load_model("clip-ref-tiny", pretrained=str(tmp_path / "w.pkl"))
    weights = out / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        load_model(str(out))


def test_unknown_model_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="unknown model 'ViT-Nope'"):
        load_model("ViT-Nope")
    with pytest.raises(FileNotFoundError, match="no open_clip_config.json"):
        load_model(f"local-dir:{tmp_path}")


def test_truncated_text_encoding_matches_full_context(tiny_bundle):
    tokens = tiny_bundle.tokenizer(["a red seven", "a photo of a small striped star on a gray background"])
    with torch.no_grad():
        full = tiny_bundle.model.encode_text(tokens)
        cut = encode_text(tiny_bundle.model, tokens)
    assert torch.allclose(full, cut, atol=1e-5)
