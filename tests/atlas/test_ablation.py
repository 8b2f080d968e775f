import pytest
import torch

from tlatlas.atlas.ablation import ablation_hook, position_mask
from tlatlas.hooks import hooks_attached
from tlatlas.tasks import build_suite
from tlatlas.tokens import encode_batch


def test_position_mask_roles_and_indices():
    roles = torch.tensor([[0, 1, 1, 2, -1], [0, 1, 2, -1, -1]])
    assert position_mask(roles, "all").tolist() == [[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]]
    assert position_mask(roles, "last").tolist() == [[0, 0, 0, 1, 0], [0, 0, 1, 0, 0]]
    assert position_mask(roles, 3).tolist() == [[0, 0, 0, 1, 0], [0, 0, 0, 0, 0]]
    # a clear ValueError; under the test suite's runtime type checks the Literal hint fires first
    with pytest.raises((ValueError, TypeError), match="answer"):
        position_mask(roles, "answer")
    with pytest.raises(IndexError):
        position_mask(roles, 5)


@pytest.mark.parametrize("role", ["bos", "last"])
def test_zero_hook_on_one_role_changes_only_that_role_and_later(tiny_models, role):
    model = tiny_models["llama"]
    batch = encode_batch(list(build_suite("synthetic", per_family=1))[:2], model.tokenizer)
    hook = ablation_hook("zero", position_mask(batch.roles, role), batch.roles)
    name = "blocks.1.hook_attn_out"
    with torch.no_grad():
        clean = model.bridge(batch.tokens)
        with hooks_attached(model.bridge, [(name, hook)]):
            ablated = model.bridge(batch.tokens)
        again = model.bridge(batch.tokens)  # the hook was removed
    assert torch.equal(clean, again)
    first = 0 if role == "bos" else int(batch.scored_pos[0])
    diff = (clean[0] - ablated[0]).abs().amax(-1)
    if first > 0:
        assert float(diff[:first].max()) == 0.0  # causal: earlier positions untouched
    assert float(diff[first]) > 1e-3


def test_hooks_attached_rejects_unknown_hook_points(tiny_models):
    with pytest.raises(KeyError, match="no such hook"):
        with hooks_attached(tiny_models["llama"].bridge, [("blocks.9.hook_attn_out", lambda a, h: a)]):
            pass
