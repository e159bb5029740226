"""A NetworkPolicy evaluator for the chart tests: may a source reach a pod on a port?

It follows the Kubernetes semantics (networking.k8s.io/v1): a pod selected by no policy of a
direction is open in that direction; otherwise a connection needs one rule of one selecting
policy that admits the peer and the port. Peers: ``podSelector`` alone (same namespace),
``namespaceSelector`` alone (every pod of the matching namespaces), both (matching pods of the
matching namespaces), ``ipBlock`` (addresses outside the cluster's pods, e.g. NodePort traffic
after kube-proxy's SNAT). Mocked because no cluster (and no CNI enforcing policies) runs here.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from tests.support.helm import matches


@dataclass(frozen=True)
class Endpoint:
    """A pod (labels, namespace and its labels) or, with ``ip``, an address outside the pods."""

    labels: dict[str, str] = field(default_factory=dict)
    namespace: str = "rakuten"
    namespace_labels: dict[str, str] | None = None
    ip: str | None = None

    @property
    def ns_labels(self) -> dict[str, str]:
        return self.namespace_labels or {"kubernetes.io/metadata.name": self.namespace}


def pod(labels: dict[str, str], namespace: str = "rakuten") -> Endpoint:
    return Endpoint(dict(labels), namespace)


def address(ip: str) -> Endpoint:
    return Endpoint(ip=ip)


def peer_matches(peer: dict, other: Endpoint, policy_namespace: str) -> bool:
    if "ipBlock" in peer:
        if other.ip is None:
            return False  # pod traffic is matched by selectors (ipBlock is meant for outside the cluster)
        block = peer["ipBlock"]
        ip = ipaddress.ip_address(other.ip)
        return ip in ipaddress.ip_network(block["cidr"]) and not any(
            ip in ipaddress.ip_network(c) for c in block.get("except", []))
    if other.ip is not None:
        return False
    if "namespaceSelector" in peer:
        if not matches(peer["namespaceSelector"], other.ns_labels):
            return False
    elif other.namespace != policy_namespace:
        return False
    return matches(peer.get("podSelector", {}), other.labels)


def rule_admits(rule: dict, peers_key: str, other: Endpoint, port: int, policy_namespace: str) -> bool:
    ports = rule.get("ports")
    if ports and not any(p.get("port") == port for p in ports):
        return False
    peers = rule.get(peers_key)
    if not peers:  # no `from`/`to`: every source/destination
        return True
    return any(peer_matches(p, other, policy_namespace) for p in peers)


def allowed(policies: list[dict], src: Endpoint, dst: Endpoint, port: int) -> bool:
    """Whether ``src`` may open a connection to ``dst`` on ``port`` (both directions checked)."""

    def check(direction: str, own: Endpoint, other: Endpoint, key: str) -> bool:
        if own.ip is not None:
            return True  # not a pod: no NetworkPolicy applies to it
        selecting = [p for p in policies if direction in p["spec"]["policyTypes"]
                     and p["metadata"].get("namespace", "rakuten") == own.namespace
                     and matches(p["spec"]["podSelector"], own.labels)]
        if not selecting:
            return True
        rules = [(r, p["metadata"].get("namespace", "rakuten")) for p in selecting
                 for r in (p["spec"].get(direction.lower()) or [])]
        return any(rule_admits(r, key, other, port, ns) for r, ns in rules)

    return check("Egress", src, dst, "to") and check("Ingress", dst, src, "from")
