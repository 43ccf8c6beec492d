from pathlib import Path

import pytest

from config.models import ModelConfigError, load_models, parse_model
from config.settings import DEFAULT_MODELS_FILE


def test_shipped_models_file_parses() -> None:
    models = load_models(DEFAULT_MODELS_FILE)
    assert list(models) == ["tiny-sd", "sd15", "sdxl", "flux-schnell"]
    assert all(m.stand_in for m in models.values())
    assert models["flux-schnell"].dtype == "bf16"
    assert models["sdxl"].name == "sdxl"


def test_five_lines_add_a_model(tmp_path: Path) -> None:
    f = tmp_path / "models.yaml"
    f.write_text(
        "models:\n"
        "  - name: my-sdxl\n"
        "    family: sdxl\n"
        "    source: stabilityai/stable-diffusion-xl-base-1.0\n"
        "    dtype: fp16\n"
    )
    (m,) = load_models(f).values()
    assert m.source == "stabilityai/stable-diffusion-xl-base-1.0" and not m.stand_in


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ({"name": "x", "family": "sd15"}, "source"),
        ({"name": "x", "family": "sd15", "source": "a", "dtype": "int4"}, "dtype"),
        ({"name": "x", "family": "sd15", "source": "a", "colour": 1}, "colour"),
        ({"name": "bad name!", "family": "sd15", "source": "a"}, "name"),
        ({"name": "x", "family": "sd15", "source": "a", "limits": {"max_q": 1}}, "max_q"),
    ],
)
def test_bad_entries_name_the_field(raw: dict, match: str) -> None:
    with pytest.raises(ModelConfigError, match=match):
        parse_model(raw)
