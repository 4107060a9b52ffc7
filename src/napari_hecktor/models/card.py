"""Model folders: weights (safetensors, never pickle) plus a JSON model card.

A model folder holds ``model.safetensors`` and ``model_card.json``. The card says what
the network is (architecture and its config), how its input was prepared (the
preprocessing recipe), its outputs, the inference defaults, and where it came from
(training data, fold, metrics, seed, command, code version). Loading checks all of it
and refuses a mismatch with one clear message.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import HecktorInputError
from ..segment.preprocess import INPUT_CHANNELS, check_recipe

CARD_NAME = "model_card.json"
WEIGHTS_NAME = "model.safetensors"
CARD_FORMAT = 1
DEMO_WARNING = "synthetic demo - not for clinical use"
#: Where the bundled (demo) models live inside the package.
BUNDLED_DIR = Path(__file__).resolve().parent.parent / "resources" / "models"


@dataclass
class ModelCard:
    """What a weight file is, how to feed it, and where it came from."""

    name: str
    architecture: str
    config: dict[str, Any]
    preprocessing: dict[str, Any]
    input_channels: list[str] = field(default_factory=lambda: list(INPUT_CHANNELS))
    output_channels: list[str] = field(default_factory=lambda: ["GTVp", "GTVn"])
    inference: dict[str, Any] = field(
        default_factory=lambda: {
            "roi_size": [128, 128, 128],
            "overlap": 0.5,
            "thresholds": [0.5, 0.5],
            "min_component_voxels": 50,
        }
    )
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    #: Outcome heads trained after segmentation (MMPL stages 2-3), e.g. ``{"hpv": {...},
    #: "survival": {"intervals": [...], ...}}`` with how they were trained and their
    #: metrics; empty for a segmentation-only model (and for cards written before it).
    heads: dict[str, Any] = field(default_factory=dict)
    demo: bool = False
    warning: str = ""
    format: int = CARD_FORMAT

    @property
    def label(self) -> str:
        """How the model is shown to users (demo models say so)."""
        return f"{self.name} ({DEMO_WARNING})" if self.demo else self.name

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "") -> ModelCard:
        """Parse and validate a card; raise :class:`HecktorInputError` naming the problem."""
        from .registry import ARCHITECTURES

        where = f" in {source}" if source else ""
        missing = [k for k in ("name", "architecture", "config", "preprocessing") if k not in data]
        if missing:
            raise HecktorInputError(f"model card{where} lacks {', '.join(missing)}")
        if data.get("format", CARD_FORMAT) > CARD_FORMAT:
            raise HecktorInputError(
                f"model card{where} has format {data['format']}; this version reads up to "
                f"{CARD_FORMAT}: update napari-hecktor"
            )
        if data["architecture"] not in ARCHITECTURES:
            raise HecktorInputError(
                f"model card{where} names architecture {data['architecture']!r}; known: "
                f"{', '.join(sorted(ARCHITECTURES))}"
            )
        if list(data.get("input_channels", INPUT_CHANNELS)) != list(INPUT_CHANNELS):
            raise HecktorInputError(
                f"model card{where} expects input channels {data.get('input_channels')}; "
                f"this version feeds {list(INPUT_CHANNELS)}"
            )
        known = {f for f in cls.__dataclass_fields__}
        card = cls(**{k: v for k, v in data.items() if k in known})
        card.preprocessing = check_recipe(card.preprocessing)
        if card.demo and DEMO_WARNING not in card.warning:
            card.warning = (card.warning + " " + DEMO_WARNING).strip()
        return card


def save_model(folder: str | Path, model: Any, card: ModelCard) -> Path:
    """Write ``model``'s weights (safetensors) and its card into ``folder``."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    weights = folder / WEIGHTS_NAME
    save_file(state, str(weights), metadata={"name": card.name})
    weights.chmod(0o644)  # safetensors writes owner-only files; models are shared read-only
    (folder / CARD_NAME).write_text(card.to_json() + "\n")
    return folder


def read_card(folder: str | Path) -> ModelCard:
    """Read and check a model folder's card (cheap: no weights loaded)."""
    folder = resolve_model_path(folder)
    path = folder / CARD_NAME
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise HecktorInputError(f"{folder} is not a model folder: {CARD_NAME} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HecktorInputError(f"model card {path} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise HecktorInputError(f"model card {path} is not a JSON object")
    return ModelCard.from_dict(data, source=str(path))


def load_model(folder: str | Path, device: Any = "cpu") -> tuple[Any, ModelCard]:
    """Build the network named by the card and load its weights; eval mode on ``device``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .registry import build_model

    folder = resolve_model_path(folder)
    card = read_card(folder)
    model = build_model(card.architecture, card.config)
    weights = folder / WEIGHTS_NAME
    if not weights.exists():
        raise HecktorInputError(f"model folder {folder} has no {WEIGHTS_NAME}")
    try:
        state = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise HecktorInputError(f"cannot read weights {weights}: {exc}") from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or extra or wrong:
        detail = "; ".join(
            part
            for part in (
                f"missing {len(missing)} (e.g. {missing[0]})" if missing else "",
                f"unexpected {len(extra)} (e.g. {extra[0]})" if extra else "",
                f"wrong shape {len(wrong)} (e.g. {wrong[0]})" if wrong else "",
            )
            if part
        )
        raise HecktorInputError(
            f"weights in {folder} do not fit the {card.architecture} of its card: {detail}"
        )
    model.load_state_dict(state)
    return model.to(device).eval(), card


def bundled_models() -> list[str]:
    """Names of the models shipped inside the package."""
    if not BUNDLED_DIR.is_dir():
        return []
    return sorted(p.name for p in BUNDLED_DIR.iterdir() if (p / CARD_NAME).exists())


def models_in(folder: str | Path) -> list[str]:
    """Model folders directly inside ``folder`` (a user's weights folder), as paths."""
    folder = Path(folder)
    if not str(folder) or not folder.is_dir():
        return []
    return sorted(str(p) for p in folder.iterdir() if (p / CARD_NAME).exists())


def resolve_model_path(name_or_path: str | Path) -> Path:
    """A model folder from a path, or from the name of a bundled model."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    bundled = BUNDLED_DIR / str(name_or_path)
    if bundled.is_dir():
        return bundled
    known = ", ".join(bundled_models()) or "none installed"
    raise HecktorInputError(
        f"no model folder or bundled model named {name_or_path!r} (bundled: {known})"
    )
