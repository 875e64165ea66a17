"""Loading local state-dict files: torchvision keys, stem adaptation, reports, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision

from mtl.models.backbones import (
    adapt_input_conv,
    create_backbone,
    list_backbones,
    load_pretrained,
)

TORCHVISION = [n for n in list_backbones() if n != "smallcnn"]


@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_state_dict_loads_with_grey_stem(name: str, tmp_path: Path) -> None:
    """An ImageNet-style torchvision file (classifier included) into a 1-channel backbone."""
    reference = getattr(torchvision.models, name)(weights=None)
    ref_sd = reference.state_dict()
    path = tmp_path / f"{name}.pth"
    torch.save(ref_sd, path)

    b = create_backbone(name, in_channels=1, pretrained=str(path))
    report = b.pretrained_report
    assert report is not None
    assert report.adapted == [b.stem_weight_key]
    assert not report.missing and not report.unexpected and not report.skipped
    assert report.ignored_head, "the ImageNet classifier keys are reported as ignored"
    own = b.state_dict()
    # Grey stem = sum of the RGB filters (same response as a grey image replicated to RGB).
    torch.testing.assert_close(
        own[b.stem_weight_key], ref_sd[b.stem_weight_key].sum(dim=1, keepdim=True)
    )
    for key in report.loaded:
        if key != b.stem_weight_key:
            torch.testing.assert_close(own[key], ref_sd[key])


def test_rgb_backbone_reproduces_torchvision_features(tmp_path: Path) -> None:
    """Same channels: the backbone equals torchvision's model up to its classifier."""
    reference = torchvision.models.resnet18(weights=None).eval()
    path = tmp_path / "r18.pth"
    torch.save(reference.state_dict(), path)
    b = create_backbone("resnet18", 3, pretrained=str(path)).eval()
    assert b.pretrained_report is not None and b.pretrained_report.clean
    reference.fc = torch.nn.Identity()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(b(x), reference(x))


def test_grey_image_matches_replicated_rgb(tmp_path: Path) -> None:
    rgb = create_backbone("smallcnn", 3).eval()
    path = tmp_path / "rgb.pt"
    torch.save(rgb.state_dict(), path)
    grey = create_backbone("smallcnn", 1, pretrained=str(path)).eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(grey(x), rgb(x.expand(-1, 3, -1, -1)))


def test_adapt_input_conv_many_channels() -> None:
    w = torch.randn(8, 3, 3, 3)
    w5 = adapt_input_conv(w, 5)
    assert w5.shape == (8, 5, 3, 3)
    torch.testing.assert_close(w5[:, 3:], w[:, :2] * 3 / 5)
    assert adapt_input_conv(w, 3) is w


def test_small_input_stem_mismatch_is_reported(tmp_path: Path) -> None:
    """The 7×7 ImageNet stem cannot fill the 3×3 small-input stem: skipped, the rest loads."""
    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    b = create_backbone("resnet18", 1, pretrained=str(path), small_input=True)
    report = b.pretrained_report
    assert report is not None and not report.clean
    assert [s.split(":")[0] for s in report.skipped] == ["conv1.weight"]
    assert "conv1.weight" in report.missing
    assert "shape mismatch" in report.summary()


def test_prefixed_and_wrapped_state_dicts(tmp_path: Path) -> None:
    src = create_backbone("smallcnn", 1)
    wrapped = {"state_dict": {f"module.backbone.{k}": v for k, v in src.state_dict().items()}}
    path = tmp_path / "ckpt.pt"
    torch.save(wrapped, path)
    dst = create_backbone("smallcnn", 1, pretrained=str(path))
    assert dst.pretrained_report is not None and dst.pretrained_report.clean
    for (k, a), b in zip(src.state_dict().items(), dst.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=k)


def test_partial_file_reports_missing_and_unexpected(tmp_path: Path) -> None:
    sd = create_backbone("smallcnn", 1).state_dict()
    kept = {k: v for k, v in sd.items() if not k.startswith("head.")}
    kept["extra.weight"] = torch.zeros(3)
    path = tmp_path / "partial.pt"
    torch.save(kept, path)
    b = create_backbone("smallcnn", 1)
    report = load_pretrained(b, path)
    assert report.unexpected == ["extra.weight"]
    assert set(report.missing) == {"head.2.weight", "head.2.bias"}
    with pytest.raises(ValueError, match="strict"):
        load_pretrained(b, path, strict=True)


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "weights.pth"
    with pytest.raises(FileNotFoundError, match=r"weights\.pth"):
        create_backbone("resnet18", 3, pretrained=str(path))


def test_unrelated_state_dict_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "other.pt"
    torch.save({"foo.weight": torch.zeros(2)}, path)
    with pytest.raises(ValueError, match=r"no key .* matches"):
        create_backbone("smallcnn", 1, pretrained=str(path))
    torch.save([1, 2, 3], path)
    with pytest.raises(ValueError, match="does not hold a state dict"):
        create_backbone("smallcnn", 1, pretrained=str(path))
