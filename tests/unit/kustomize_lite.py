"""Renders a kustomization the way `kustomize build` does, for the features our manifests use.

No kustomize binary is available from the package sources the project may use, so the deploy
tests render the overlays themselves. Only `resources`, `namespace`, `images`, `replicas` and
`patches` (strategic-merge files whose maps merge and whose lists are replaced) are
understood; any other field raises, so a manifest using more than this is never rendered
wrongly in silence.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

Resource = dict[str, Any]
KNOWN_FIELDS = {"apiVersion", "kind", "resources", "namespace", "images", "replicas", "patches"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}


class UnsupportedKustomization(ValueError):
    pass


def load_documents(path: Path) -> list[Resource]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    for doc in docs:
        if not isinstance(doc, dict) or "kind" not in doc or "metadata" not in doc:
            raise ValueError(f"{path}: not a Kubernetes object: {doc!r:.80}")
    return docs


def _merge(base: Any, patch: Any) -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, value in patch.items():
            merged[key] = _merge(base[key], value) if key in base else copy.deepcopy(value)
        return merged
    return copy.deepcopy(patch)


def _containers(resource: Resource) -> list[dict[str, Any]]:
    spec = resource.get("spec", {})
    template = spec.get("template", {}).get("spec", {})
    return list(template.get("containers", [])) + list(template.get("initContainers", []))


def _set_image(container: dict[str, Any], rule: dict[str, Any]) -> None:
    image = container["image"]
    name, _, tag = image.partition(":")
    if name != rule["name"]:
        return
    container["image"] = f"{rule.get('newName', name)}:{rule.get('newTag', tag)}"


def build(directory: Path) -> list[Resource]:
    """The objects `kustomize build directory` would print, for the supported fields."""
    spec = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(spec) - KNOWN_FIELDS
    if unknown:
        raise UnsupportedKustomization(f"{directory}: fields not rendered here: {unknown}")
    resources: list[Resource] = []
    for entry in spec.get("resources", []):
        target = (directory / entry).resolve()
        if target.is_dir():
            resources.extend(build(target))
        elif target.is_file():
            resources.extend(load_documents(target))
        else:
            raise FileNotFoundError(f"{directory}: resource {entry} does not exist")
    for patch_entry in spec.get("patches", []):
        if set(patch_entry) != {"path"}:
            raise UnsupportedKustomization(f"{directory}: only file patches: {patch_entry}")
        for patch in load_documents(directory / patch_entry["path"]):
            key = (patch["kind"], patch["metadata"]["name"])
            matches = [i for i, r in enumerate(resources)
                       if (r["kind"], r["metadata"]["name"]) == key]
            if len(matches) != 1:
                raise ValueError(f"{directory}: patch {key} matches {len(matches)} objects")
            resources[matches[0]] = _merge(resources[matches[0]], patch)
    for rule in spec.get("replicas", []):
        found = [r for r in resources if r["metadata"]["name"] == rule["name"]
                 and r["kind"] in {"Deployment", "StatefulSet"}]
        if len(found) != 1:
            raise ValueError(f"{directory}: replicas for unknown {rule['name']}")
        found[0]["spec"]["replicas"] = rule["count"]
    for rule in spec.get("images", []):
        for resource in resources:
            for container in _containers(resource):
                _set_image(container, rule)
    if "namespace" in spec:
        for resource in resources:
            if resource["kind"] not in CLUSTER_SCOPED:
                resource["metadata"]["namespace"] = spec["namespace"]
    return resources
