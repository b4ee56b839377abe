"""The operator's API client and `ensure` against the stand-in: idempotent, drift-correcting."""

from __future__ import annotations

import pytest

from lmaas_operator.kube import AlreadyExists, KubeClient, is_subset

DEPLOYMENT = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "web", "namespace": "ns", "labels": {"app": "web"}},
    "spec": {
        "replicas": 0,
        "selector": {"matchLabels": {"app": "web"}},
        "template": {
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "image": "img:1"}]},
        },
    },
}


def test_ensure_creates_once_then_corrects_drift(kube: KubeClient) -> None:
    assert kube.ensure(DEPLOYMENT) == "created"
    assert kube.ensure(DEPLOYMENT) == "unchanged"
    kube.patch(
        "apps/v1",
        "Deployment",
        "web",
        {"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "evil:1"}]}}}},
        "ns",
    )
    assert kube.ensure(DEPLOYMENT) == "patched"
    live = kube.get("apps/v1", "Deployment", "web", "ns")
    assert live is not None
    assert live["spec"]["template"]["spec"]["containers"][0]["image"] == "img:1"


def test_ensure_leaves_ignored_fields_to_their_owner(kube: KubeClient) -> None:
    kube.ensure(DEPLOYMENT)
    kube.patch("apps/v1", "Deployment", "web", {"spec": {"replicas": 3}}, "ns")  # the activator
    assert kube.ensure(DEPLOYMENT, ignore=("spec.replicas",)) == "unchanged"
    live = kube.get("apps/v1", "Deployment", "web", "ns")
    assert live is not None and live["spec"]["replicas"] == 3


def test_create_twice_is_already_exists_and_list_filters_labels(kube: KubeClient) -> None:
    kube.create(DEPLOYMENT)
    with pytest.raises(AlreadyExists):
        kube.create(DEPLOYMENT)
    assert len(kube.list("apps/v1", "Deployment", "ns", labels={"app": "web"})) == 1
    assert kube.list("apps/v1", "Deployment", "ns", labels={"app": "other"}) == []
    assert kube.delete("apps/v1", "Deployment", "web", "ns") is True
    assert kube.delete("apps/v1", "Deployment", "web", "ns") is False
    assert kube.get("apps/v1", "Deployment", "web", "ns") is None


def test_is_subset() -> None:
    assert is_subset({"a": {"b": 1}}, {"a": {"b": 1, "c": 2}, "d": 3})
    assert not is_subset({"a": [1]}, {"a": [1, 2]})
    assert is_subset({"n": "4"}, {"n": 4})
    assert not is_subset({"a": 1}, {})
