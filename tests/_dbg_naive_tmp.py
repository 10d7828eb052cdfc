import pytest, torch
import test_naive as T
@pytest.fixture(autouse=True)
def _x(): yield
def test_dbg():
    for name in T.FAMILIES: T.test_keys_match_the_batched_keys(name)
    loaded, hparams, templates = T.tiny("tiny-gpt2")
    C = T.second_moment(256)
    e=T.Editor(loaded, hparams=hparams, stats=C, templates=templates); f = e.edit(T.REQUEST, "r-rome"); e.restore()
    e=T.NaiveEditor(loaded, hparams=hparams, stats=C, templates=templates); n = e.edit(T.REQUEST, "r-rome"); e.restore()
    print((f.k_star-n.k_star).norm(), (f.v_star-n.v_star).norm(), f.v_star.norm(), f.loss_trace, n.loss_trace)
    print(f.left.norm(), n.left.norm(), f.right.norm(), n.right.norm(), (torch.outer(f.left,f.right)-torch.outer(n.left,n.right)).norm(), f.denominator, n.denominator)
