"""Standing reliability check, threads: explainers of every method, a capture and a shared
StaticExplainer all use ONE model while plain inference runs on it in another thread. Every map,
every logit and every captured stage must equal, bit for bit, what a sequential run gave."""

import threading

import torch
from models_zoo import TinyCNN
from torch import nn

import gradex
from gradex import cams, excitation

METHODS = [*cams.METHODS, *excitation.METHODS]
ROUNDS = 30
FIELDS = ("saliency", "cam", "target", "score", "logits")


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = TinyCNN().eval()
    with torch.no_grad():  # BatchNorm statistics that are not the identity
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
    return model


def _differences(got, expected) -> list[str]:
    return [f for f in FIELDS if not torch.equal(getattr(got, f), getattr(expected, f))]


def test_every_method_capture_static_and_plain_inference_share_one_model():
    model = _model()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    jobs = {}  # name -> (run, check): run() does one call, check(result) lists what differs
    for k, method in enumerate(METHODS):
        explainer = gradex.Explainer(model, method=method)
        x = torch.randn(2, 3, 32, 32)
        target = [k % 10, (k + 3) % 10] if k % 2 else None
        expected = explainer(x, target=target)
        jobs[method] = (
            lambda e=explainer, x=x, t=target: e(x, target=t),
            lambda got, expected=expected: _differences(got, expected),
        )

    capturer = gradex.Explainer(model)
    x_capture = torch.randn(3, 3, 32, 32)
    captured = capturer.capture(x_capture)

    def capture_differences(got):
        wrong = [] if torch.equal(got.logits, captured.logits) else ["logits"]
        pairs = zip(got.activations, captured.activations, strict=True)
        return wrong + [f"stage {k}" for k, (a, b) in enumerate(pairs) if not torch.equal(a, b)]

    jobs["capture"] = (lambda: capturer.capture(x_capture), capture_differences)

    static = gradex.Explainer(model, method="contrastive excitation").static(
        torch.randn(2, 3, 32, 32)
    )
    for k in range(2):  # two threads share the one StaticExplainer
        x = torch.randn(2, 3, 32, 32)
        target = [4, 7] if k else None
        expected = static(x, target=target)
        jobs[f"static {k}"] = (
            lambda x=x, t=target: static(x, target=t),
            lambda got, expected=expected: _differences(got, expected),
        )

    x_plain = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        plain_expected = model(x_plain)

    def plain_once():
        with torch.no_grad():
            return model(x_plain)

    jobs["plain inference"] = (
        plain_once,
        lambda got: [] if torch.equal(got, plain_expected) else ["logits"],
    )

    start = threading.Barrier(len(jobs))
    wrong: dict[str, set[str]] = {}
    errors = []

    def worker(name):
        run, check = jobs[name]
        try:
            start.wait()
            for _ in range(ROUNDS):
                differences = check(run())
                if differences:
                    wrong.setdefault(name, set()).update(differences)
        except Exception as error:  # surfaced below
            errors.append((name, error))

    threads = [threading.Thread(target=worker, args=(name,)) for name in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert not wrong, wrong
    for key, value in model.state_dict().items():  # the shared model is as it was
        assert torch.equal(value, state[key]), key
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert not any(m.training for m in model.modules())


def _run_in_threads(calls, expected) -> tuple[list, list]:
    """Each ``calls[k]()`` ROUNDS times on a thread of its own, all started together; returns
    (what differed from ``expected[k]``, the errors raised)."""
    start = threading.Barrier(len(calls))
    wrong, errors = [], []

    def worker(k):
        try:
            start.wait()
            for _ in range(ROUNDS):
                differences = _differences(calls[k](), expected[k])
                if differences:
                    wrong.append((k, differences))
        except Exception as error:  # surfaced by the caller
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return wrong, errors


def test_explainers_of_one_excitation_method_on_several_threads_agree_with_one_thread():
    # Many calls of one method at once: the per-call excitation state and the hooks of each
    # call must stay with their own thread.
    model = _model()
    inputs = [torch.randn(2, 3, 32, 32) for _ in range(3)]
    for method in excitation.METHODS:
        explainers = [gradex.Explainer(model, method=method) for _ in inputs]
        expected = [e(x) for e, x in zip(explainers, inputs, strict=True)]
        calls = [lambda e=e, x=x: e(x) for e, x in zip(explainers, inputs, strict=True)]
        wrong, errors = _run_in_threads(calls, expected)
        assert not errors, (method, errors)
        assert not wrong, (method, wrong[:5])
