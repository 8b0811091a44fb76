#!/usr/bin/env python3
"""Assertions on the relay chart as rendered by helm-check.

    test_rendered.py RENDERED_DIR [--tools scripts]

RENDERED_DIR is what `scripts/helm-check helm/relay --out RENDERED_DIR` wrote:
default.yaml plus one <name>.yaml per helm/relay/ci/<name>-values.yaml.
With --tools (the folder of helm_render.py, scripts/), values that the schema (or a template guard) must refuse are
also rendered and must fail.

Needs PyYAML; when the running python lacks it, the script re-executes itself
with the helm-check virtualenv's python ($RELAY_TOOLS_VENV, default
~/.cache/relay-tools/venv), which has it.

Prints one line per check and finally `N passed, M failed`; exits 1 on any
failure.
"""
import argparse
import base64
import os
import re
import subprocess
import sys
import tempfile
import traceback

try:
    import yaml
except ImportError:  # pragma: no cover - depends on the machine
    venv = os.environ.get("RELAY_TOOLS_VENV", os.path.expanduser("~/.cache/relay-tools/venv"))
    py = os.path.join(venv, "bin", "python")
    if os.path.realpath(sys.executable) != os.path.realpath(py) and os.access(py, os.X_OK):
        os.execv(py, [py] + sys.argv)
    sys.stderr.write("test_rendered.py: PyYAML is missing (run helm-check once to create %s)\n" % venv)
    sys.exit(2)

CHART = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECKS = []  # (name, function)


def check(name):
    def register(fn):
        CHECKS.append((name, fn))
        return fn
    return register


# ---------------------------------------------------------------- loading --

class Render:
    """One rendered variant: its objects, and the raw text of each."""

    def __init__(self, path):
        self.name = os.path.basename(path)[: -len(".yaml")]
        text = open(path).read()
        self.objects = []
        self.raw = []
        for chunk in re.split(r"(?m)^---\s*$", text):
            doc = yaml.safe_load(chunk)
            if doc:
                self.objects.append(doc)
                self.raw.append(chunk)

    def of_kind(self, kind):
        return [o for o in self.objects if o.get("kind") == kind]

    def one(self, kind, name=None):
        found = [o for o in self.of_kind(kind) if name is None or o["metadata"]["name"] == name]
        assert len(found) == 1, "%s: expected one %s%s, found %d" % (
            self.name, kind, " " + name if name else "", len(found))
        return found[0]

    def maybe(self, kind, name):
        found = [o for o in self.of_kind(kind) if o["metadata"]["name"] == name]
        return found[0] if found else None

    def raw_of(self, obj):
        return self.raw[self.objects.index(obj)]


def relay_container(dep):
    cs = [c for c in dep["spec"]["template"]["spec"]["containers"] if c["name"] == "relay"]
    assert len(cs) == 1, "no container named relay"
    return cs[0]


def env_list(container):
    return container.get("env") or []


def env_of(container, name):
    for e in env_list(container):
        if e["name"] == name:
            return e
    return None


def env_value(container, name):
    e = env_of(container, name)
    assert e is not None, "env %s missing" % name
    assert "value" in e, "env %s has no literal value: %r" % (name, e)
    return e["value"]


def secret_ref(container, name):
    e = env_of(container, name)
    assert e is not None, "env %s missing" % name
    assert "value" not in e, "env %s is a literal, not a secretKeyRef" % name
    ref = e.get("valueFrom", {}).get("secretKeyRef")
    assert ref, "env %s does not come from a secretKeyRef: %r" % (name, e)
    return ref["name"], ref["key"]


def labels_match(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


def prestop_sleep(container):
    cmd = container["lifecycle"]["preStop"]["exec"]["command"]
    assert os.path.basename(cmd[0]) == "sleep" and len(cmd) == 2, "preStop is not `sleep N`: %r" % cmd
    return int(cmd[1])


# Passwords the ci values files set; they may appear only inside Secrets (base64).
KNOWN_PASSWORDS = {
    "external-redis": "ci-external-redis-password-4f9a",
    "bundled-redis": "ci-bundled-redis-password-77c1",
}


# ----------------------------------------------------------- all variants --

def per_variant_checks(r):
    deps = r.of_kind("Deployment")

    @check("%s: exactly one relay Deployment" % r.name)
    def _():
        assert len(deps) == 1, [d["metadata"]["name"] for d in deps]

    for dep in deps:
        c = relay_container(dep)
        pod = dep["spec"]["template"]["spec"]

        @check("%s: container runs `relay serve` and listens on the port named http" % r.name)
        def _(c=c):
            assert c["args"][0] == "serve", c["args"]
            assert "command" not in c, "the image entrypoint must stay /usr/local/bin/relay"
            ports = {p["name"]: p["containerPort"] for p in c["ports"]}
            assert "http" in ports, ports
            assert env_value(c, "RELAY_LISTEN") == "0.0.0.0:%d" % ports["http"]

        @check("%s: probes hit /healthz and /readyz on the admin port, the one RELAY_ADMIN_LISTEN binds" % r.name)
        def _(c=c):
            ports = {p["name"]: p["containerPort"] for p in c["ports"]}
            admin = env_value(c, "RELAY_ADMIN_LISTEN")
            assert admin == "0.0.0.0:%d" % ports["admin"], (admin, ports)
            assert ports["admin"] != ports["http"], ports
            live, ready = c["livenessProbe"]["httpGet"], c["readinessProbe"]["httpGet"]
            assert (live["path"], live["port"]) == ("/healthz", "admin"), live
            assert (ready["path"], ready["port"]) == ("/readyz", "admin"), ready
            start = c["startupProbe"]["httpGet"]
            assert (start["path"], start["port"]) == ("/healthz", "admin"), start

        @check("%s: scraping (annotations or ServiceMonitor) targets the admin port" % r.name)
        def _(c=c, dep=dep):
            ports = {p["name"]: p["containerPort"] for p in c["ports"]}
            ann = dep["spec"]["template"]["metadata"].get("annotations", {})
            if "prometheus.io/port" in ann:
                assert ann["prometheus.io/port"] == str(ports["admin"]), ann
            svc = r.one("Service", dep["metadata"]["name"])
            admin = [p for p in svc["spec"]["ports"] if p["name"] == "admin"]
            assert admin and admin[0]["targetPort"] == "admin", svc["spec"]["ports"]
            for sm in r.of_kind("ServiceMonitor"):
                assert [e["port"] for e in sm["spec"]["endpoints"]] == ["admin"], sm["spec"]["endpoints"]
            for ing in r.of_kind("Ingress"):
                for rule in ing["spec"]["rules"]:
                    for path in rule["http"]["paths"]:
                        assert path["backend"]["service"]["port"]["name"] == "http", path
            for route in r.of_kind("HTTPRoute"):
                for rule in route["spec"]["rules"]:
                    for ref in rule["backendRefs"]:
                        assert ref["port"] == [p for p in svc["spec"]["ports"] if p["name"] == "http"][0]["port"], ref

        @check("%s: helm test pod joins a room over the Service and is a test hook" % r.name)
        def _(dep=dep):
            pods = [o for o in r.of_kind("Pod") if o["metadata"]["name"].endswith("-test-connection")]
            assert len(pods) == 1, [o["metadata"]["name"] for o in r.of_kind("Pod")]
            pod = pods[0]
            assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
            assert pod["spec"]["restartPolicy"] == "Never"
            svc = r.one("Service", dep["metadata"]["name"])
            pod_labels = pod["metadata"]["labels"]
            assert not labels_match(svc["spec"]["selector"], pod_labels), "the Service must not select the test pod"
            script = pod["spec"]["containers"][0]["args"][0]
            assert "host=relay.default.svc port=80" in script and "/dev/tcp/$host/$port" in script, script
            guest = env_value(relay_container(dep), "RELAY_AUTH") == "guest"
            assert ("relay chat" in script) == guest, script
            if guest:
                assert "ws://$host:$port/ws" in script and "grep -qF" in script, script
            c = pod["spec"]["containers"][0]
            assert c["image"] == relay_container(dep)["image"]
            assert c["securityContext"]["readOnlyRootFilesystem"] is True

        @check("%s: terminationGracePeriodSeconds > preStop sleep + RELAY_DRAIN_SECS" % r.name)
        def _(c=c, pod=pod):
            sleep = prestop_sleep(c)
            drain = int(env_value(c, "RELAY_DRAIN_SECS"))
            grace = pod["terminationGracePeriodSeconds"]
            assert isinstance(grace, int), grace
            assert grace > sleep + drain, "grace %d <= preStop %d + drain %d" % (grace, sleep, drain)

        @check("%s: node id comes from the pod name" % r.name)
        def _(c=c):
            e = env_of(c, "RELAY_NODE_ID")
            assert e and e["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name", e

        @check("%s: every env var is a string or a valueFrom, no float notation" % r.name)
        def _(c=c):
            names = [e["name"] for e in env_list(c)]
            assert len(names) == len(set(names)), "duplicate env: %r" % names
            for e in env_list(c):
                if "value" in e:
                    assert isinstance(e["value"], str), e
                    if e["name"].startswith("RELAY_") and e["name"].endswith(("_MS", "_BYTES", "_SECS", "RATE", "CONNECTIONS", "_IP")):
                        assert re.fullmatch(r"[0-9]+", e["value"]), e
                else:
                    assert "valueFrom" in e, e
            assert env_value(c, "RELAY_AUTH") in ("guest", "token")
            assert env_value(c, "RELAY_LOG_FORMAT") in ("text", "json")

        @check("%s: securityContext is non-root, uid 10001, read-only, no capabilities" % r.name)
        def _(c=c, pod=pod):
            psc, csc = pod.get("securityContext", {}), c.get("securityContext", {})
            assert psc.get("runAsNonRoot") is True or csc.get("runAsNonRoot") is True
            assert csc.get("runAsUser", psc.get("runAsUser")) == 10001
            assert csc.get("readOnlyRootFilesystem") is True
            assert csc.get("allowPrivilegeEscalation") is False
            assert "ALL" in csc.get("capabilities", {}).get("drop", [])
            assert not csc.get("capabilities", {}).get("add")
            seccomp = csc.get("seccompProfile") or psc.get("seccompProfile") or {}
            assert seccomp.get("type") == "RuntimeDefault", seccomp
            assert not csc.get("privileged")

        @check("%s: RELAY_SECRET and RELAY_API_KEY come from the auth Secret" % r.name)
        def _(c=c):
            s_name, s_key = secret_ref(c, "RELAY_SECRET")
            a_name, a_key = secret_ref(c, "RELAY_API_KEY")
            assert s_name == a_name, (s_name, a_name)
            if r.name == "token-auth":
                assert env_value(c, "RELAY_AUTH") == "token"
                assert (s_name, s_key, a_key) == ("relay-credentials", "token-signing-key", "publish-api-key")
                assert r.maybe("Secret", "relay-credentials") is None, "the chart must not create an existing Secret"
                assert r.maybe("Secret", "relay-auth") is None, "no chart auth Secret with existingSecret"
            else:
                assert (s_name, s_key, a_key) == ("relay-auth", "relay-secret", "relay-api-key")
                sec = r.one("Secret", "relay-auth")
                for key in (s_key, a_key):
                    value = base64.b64decode(sec["data"][key]).decode()
                    assert len(value) >= 32, "generated %s too short" % key
            for name in ("RELAY_SECRET", "RELAY_API_KEY"):
                assert "value" not in env_of(c, name)

        @check("%s: Redis password only via secretKeyRef, expanded into RELAY_REDIS" % r.name)
        def _(c=c, dep=dep):
            url = env_value(c, "RELAY_REDIS")
            assert re.match(r"^(redis|rediss|redis\+cluster)://", url), url
            names = [e["name"] for e in env_list(c)]
            pw = env_of(c, "REDIS_PASSWORD")
            if pw is not None:
                secret_ref(c, "REDIS_PASSWORD")
                assert ":$(REDIS_PASSWORD)@" in url, "RELAY_REDIS does not reference $(REDIS_PASSWORD): %s" % url
                assert names.index("REDIS_PASSWORD") < names.index("RELAY_REDIS"), \
                    "REDIS_PASSWORD must be declared before RELAY_REDIS for $(VAR) expansion"
            else:
                assert "@" not in url or ":" not in url.split("://", 1)[1].split("@", 1)[0], url
            known = KNOWN_PASSWORDS.get(r.name)
            if known:
                raw = r.raw_of(dep)
                assert known not in raw, "Redis password in plain text in the Deployment"
                assert base64.b64encode(known.encode()).decode() not in raw
                sname, skey = secret_ref(c, "REDIS_PASSWORD")
                sec = r.one("Secret", sname)
                assert base64.b64decode(sec["data"][skey]).decode() == known
            for o in r.objects:
                if o["kind"] != "Secret" and known:
                    assert known not in r.raw_of(o), "password in plain text in %s" % o["kind"]

        @check("%s: pods spread across nodes and zones" % r.name)
        def _(pod=pod, dep=dep):
            tsc = pod.get("topologySpreadConstraints", [])
            keys = {t["topologyKey"] for t in tsc}
            assert {"kubernetes.io/hostname", "topology.kubernetes.io/zone"} <= keys, keys
            pod_labels = dep["spec"]["template"]["metadata"]["labels"]
            for t in tsc:
                assert labels_match(t["labelSelector"]["matchLabels"], pod_labels)

        @check("%s: Service port 80 -> http selects the relay pods" % r.name)
        def _(dep=dep):
            svc = r.one("Service", dep["metadata"]["name"])
            pod_labels = dep["spec"]["template"]["metadata"]["labels"]
            assert labels_match(svc["spec"]["selector"], pod_labels)
            assert labels_match(dep["spec"]["selector"]["matchLabels"], pod_labels)
            port = [p for p in svc["spec"]["ports"] if p["name"] == "http"][0]
            assert (port["port"], port["targetPort"]) == (80, "http"), port

        @check("%s: PodDisruptionBudget selects the relay pods" % r.name)
        def _(dep=dep):
            pdb = r.one("PodDisruptionBudget")
            pod_labels = dep["spec"]["template"]["metadata"]["labels"]
            assert labels_match(pdb["spec"]["selector"]["matchLabels"], pod_labels)
            assert ("maxUnavailable" in pdb["spec"]) != ("minAvailable" in pdb["spec"])

        @check("%s: ServiceAccount exists and the pod does not mount an API token" % r.name)
        def _(pod=pod):
            r.one("ServiceAccount", pod["serviceAccountName"])
            assert pod["automountServiceAccountToken"] is False

    @check("%s: every object carries the release labels" % r.name)
    def _():
        for o in r.objects:
            labels = o["metadata"].get("labels", {})
            assert labels.get("app.kubernetes.io/instance") == "relay", o["metadata"]
            assert labels.get("app.kubernetes.io/managed-by") == "Helm", o["metadata"]


# ----------------------------------------------------- variant specifics --

def variant_checks(r):
    if r.name == "default":
        @check("default: starts on its own: bundled Redis with a chart-made password")
        def _():
            c = relay_container(r.one("Deployment"))
            assert env_value(c, "RELAY_REDIS") == "redis://:$(REDIS_PASSWORD)@relay-redis:6379"
            assert secret_ref(c, "REDIS_PASSWORD") == ("relay-redis", "redis-password")
            r.one("Secret", "relay-redis")
            assert len(r.of_kind("StatefulSet")) == 1
            assert env_value(c, "RELAY_LOG_FORMAT") == "json"
            assert env_value(c, "RELAY_LOG_LEVEL") == "info"
            assert env_value(c, "RELAY_DRAIN_SECS") == "10"
            assert r.one("Deployment")["spec"]["replicas"] == 3

        @check("default: prometheus scrape annotations on the pods")
        def _():
            ann = r.one("Deployment")["spec"]["template"]["metadata"]["annotations"]
            assert ann.get("prometheus.io/scrape") == "true"
            assert ann.get("prometheus.io/port") == "9090"
            assert ann.get("prometheus.io/path") == "/metrics"

        @check("default: no optional objects")
        def _():
            kinds = sorted(o["kind"] for o in r.objects)
            assert kinds == ["Deployment", "Pod", "PodDisruptionBudget", "Secret", "Secret", "Service", "Service",
                             "Service", "ServiceAccount", "StatefulSet"], kinds

    if r.name == "external-redis":
        @check("external-redis: rediss:// URL with the ACL user and the password reference")
        def _():
            c = relay_container(r.one("Deployment"))
            assert env_value(c, "RELAY_REDIS") == "rediss://relay:$(REDIS_PASSWORD)@redis.example.internal:6380/0"
            assert secret_ref(c, "REDIS_PASSWORD") == ("relay-redis", "redis-password")
            assert not r.of_kind("StatefulSet")
            assert env_value(c, "RELAY_ALLOWED_ORIGINS") == "https://chat.example.com,https://www.example.com"
            assert env_value(c, "RELAY_TRUSTED_PROXIES") == "10.0.0.0/8"
            assert env_value(c, "RELAY_MAX_CONNECTIONS") == "18000"
            assert env_value(c, "RELAY_MAX_CONNS_PER_IP") == "50"
            assert env_value(c, "RELAY_PRESENCE_TTL_MS") == "90000"
            assert env_value(c, "OTEL_EXPORTER_OTLP_ENDPOINT") == "http://otel-collector.observability:4317"
            assert env_value(c, "RUST_LOG") == "info,relay=debug"

        @check("external-redis: NetworkPolicy admits the http port from the ingress namespace")
        def _():
            np = r.one("NetworkPolicy", "relay")
            rule = np["spec"]["ingress"][0]
            assert rule["ports"][0]["port"] == "http"
            assert rule["from"][0]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "ingress-nginx"}

        @check("external-redis: soft pod anti-affinity")
        def _():
            aff = r.one("Deployment")["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
            assert "preferredDuringSchedulingIgnoredDuringExecution" in aff

    if r.name == "bundled-redis":
        @check("bundled-redis: StatefulSet + Service rendered and the relay points at them")
        def _():
            sts = r.one("StatefulSet")
            svc = r.one("Service", "relay-redis")
            sts_labels = sts["spec"]["template"]["metadata"]["labels"]
            assert labels_match(svc["spec"]["selector"], sts_labels)
            assert labels_match(sts["spec"]["selector"]["matchLabels"], sts_labels)
            assert svc["spec"]["ports"][0]["port"] == 6379
            r.one("Service", sts["spec"]["serviceName"])
            c = relay_container(r.one("Deployment"))
            assert env_value(c, "RELAY_REDIS") == "redis://:$(REDIS_PASSWORD)@relay-redis:6379"
            # The relay and Redis read the same Secret.
            rc = sts["spec"]["template"]["spec"]["containers"][0]
            assert secret_ref(c, "REDIS_PASSWORD") == secret_ref(rc, "REDIS_PASSWORD") == ("relay-redis", "redis-password")
            relay_pod = r.one("Deployment")["spec"]["template"]["metadata"]["labels"]
            assert not labels_match(svc["spec"]["selector"], relay_pod), "redis Service must not select relay pods"

        @check("bundled-redis: Redis password never on a command line, AOF on a volume claim")
        def _():
            sts = r.one("StatefulSet")
            rc = sts["spec"]["template"]["spec"]["containers"][0]
            known = KNOWN_PASSWORDS["bundled-redis"]
            assert known not in " ".join(rc.get("command", []) + rc.get("args", []))
            assert "--requirepass" not in rc.get("args", [])
            args = rc["args"]
            assert args[args.index("--appendonly") + 1] == "yes"
            assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "2Gi"
            assert rc["securityContext"]["readOnlyRootFilesystem"] is True
            assert sts["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True

        @check("bundled-redis: NetworkPolicy lets only relay pods reach Redis")
        def _():
            np = r.one("NetworkPolicy", "relay-redis")
            relay_pod = r.one("Deployment")["spec"]["template"]["metadata"]["labels"]
            sel = np["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]
            assert labels_match(sel, relay_pod)

    if r.name == "ingress-tls":
        @check("ingress-tls: Ingress has the websocket timeouts, TLS and routes to the Service")
        def _():
            ing = r.one("Ingress")
            ann = ing["metadata"]["annotations"]
            for k in ("nginx.ingress.kubernetes.io/proxy-read-timeout", "nginx.ingress.kubernetes.io/proxy-send-timeout"):
                assert int(ann[k]) >= 3600, (k, ann.get(k))
            assert ann["nginx.ingress.kubernetes.io/proxy-read-timeout"] == "7200", "user annotations must win"
            assert ann["nginx.ingress.kubernetes.io/proxy-send-timeout"] == "3600"
            assert ann["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
            assert ann["cert-manager.io/cluster-issuer"] == "letsencrypt"
            assert ing["spec"]["ingressClassName"] == "nginx"
            assert ing["spec"]["tls"] == [{"secretName": "chat-example-com-tls", "hosts": ["chat.example.com"]}]
            rule = ing["spec"]["rules"][0]
            assert rule["host"] == "chat.example.com"
            backend = rule["http"]["paths"][0]["backend"]["service"]
            assert backend == {"name": "relay", "port": {"name": "http"}}, backend

    if r.name == "autoscaling":
        @check("autoscaling: HPA on CPU and relay_connections drives the Deployment")
        def _():
            dep = r.one("Deployment")
            assert "replicas" not in dep["spec"], "the HPA owns replicas"
            hpa = r.one("HorizontalPodAutoscaler")
            assert hpa["apiVersion"] == "autoscaling/v2"
            assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": dep["metadata"]["name"]}
            assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 20)
            metrics = {m["type"]: m for m in hpa["spec"]["metrics"]}
            assert metrics["Resource"]["resource"]["target"]["averageUtilization"] == 60
            pods = metrics["Pods"]["pods"]
            assert pods["metric"]["name"] == "relay_connections"
            assert pods["target"] == {"type": "AverageValue", "averageValue": "8000"}

        @check("autoscaling: grace period follows the longer drain (10 + 30 + 10)")
        def _():
            dep = r.one("Deployment")
            c = relay_container(dep)
            assert env_value(c, "RELAY_DRAIN_SECS") == "30"
            assert prestop_sleep(c) == 10
            assert dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 50

        @check("autoscaling: hard anti-affinity and PDB minAvailable")
        def _():
            spec = r.one("Deployment")["spec"]["template"]["spec"]
            assert "requiredDuringSchedulingIgnoredDuringExecution" in spec["affinity"]["podAntiAffinity"]
            assert all(t["whenUnsatisfiable"] == "DoNotSchedule" for t in spec["topologySpreadConstraints"])
            assert r.one("PodDisruptionBudget")["spec"] == {
                "minAvailable": "50%", "selector": r.one("PodDisruptionBudget")["spec"]["selector"]}

    if r.name == "gateway":
        @check("gateway: HTTPRoute to the http port with the WebSocket timeouts off, no Ingress")
        def _():
            route = r.one("HTTPRoute")
            assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
            assert route["spec"]["parentRefs"] == [{"name": "public", "namespace": "gateway-system", "sectionName": "https"}]
            assert route["spec"]["hostnames"] == ["chat.example.com"]
            rule = route["spec"]["rules"][0]
            assert rule["timeouts"] == {"request": "0s", "backendRequest": "0s"}, rule
            assert rule["backendRefs"] == [{"name": "relay", "port": 80}]
            assert not r.of_kind("Ingress")

    if r.name == "observability":
        @check("observability: PrometheusRule carries alerts/relay.rules.yaml")
        def _():
            rule = r.one("PrometheusRule")
            assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
            want = yaml.safe_load(open(os.path.join(CHART, "alerts", "relay.rules.yaml")))["groups"]
            assert rule["spec"]["groups"][: len(want)] == want
            alerts = [x["alert"] for g in rule["spec"]["groups"] for x in g["rules"] if "alert" in x]
            for name in ("RelayBackplaneErrors", "RelaySlowConsumerDisconnects", "RelayDeliveryLatencyHigh"):
                assert name in alerts, alerts
            assert "{{ $labels.instance }}" in yaml.safe_dump(rule), "alert templates must reach Prometheus unrendered"

        @check("observability: Grafana dashboard ConfigMap holds dashboards/relay.json for the sidecar")
        def _():
            import json
            cm = r.one("ConfigMap", "relay-dashboard")
            assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
            assert cm["metadata"]["annotations"]["grafana_folder"] == "Relay"
            shipped = json.loads(cm["data"]["relay.json"])
            assert shipped == json.load(open(os.path.join(CHART, "dashboards", "relay.json")))

        @check("observability: secrets derived from secretSeed, not random")
        def _():
            sec = r.one("Secret", "relay-auth")
            value = base64.b64decode(sec["data"]["relay-secret"]).decode()
            import hashlib
            want = hashlib.sha256(b"ci-seed-do-not-use/default/relay-auth/relay-secret").hexdigest()[:48]
            assert value == want, value

    if r.name == "servicemonitor":
        @check("servicemonitor: ServiceMonitor scrapes the Service's admin port")
        def _():
            sm = r.one("ServiceMonitor")
            assert sm["apiVersion"] == "monitoring.coreos.com/v1"
            assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
            svc = r.one("Service", "relay")
            assert labels_match(sm["spec"]["selector"]["matchLabels"], svc["metadata"]["labels"])
            assert sm["spec"]["namespaceSelector"] == {"matchNames": ["default"]}
            ep = sm["spec"]["endpoints"][0]
            assert ep["port"] == "admin" and ep["port"] in [p["name"] for p in svc["spec"]["ports"]]
            assert (ep["path"], ep["interval"], ep["scrapeTimeout"]) == ("/metrics", "15s", "5s")
            assert ep["metricRelabelings"][0]["action"] == "drop"

        @check("servicemonitor: no scrape annotations when the operator scrapes")
        def _():
            ann = r.one("Deployment")["spec"]["template"]["metadata"].get("annotations", {})
            assert not any(k.startswith("prometheus.io/") for k in ann), ann

    if r.name == "token-auth":
        @check("token-auth: image pinned by digest, pull secret, SA annotations")
        def _():
            dep = r.one("Deployment")
            spec = dep["spec"]["template"]["spec"]
            assert relay_container(dep)["image"] == (
                "registry.example.com/chat/relay@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
            assert spec["imagePullSecrets"] == [{"name": "regcred"}]
            sa = r.one("ServiceAccount")
            assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")


# ------------------------------------------------- chart source checks --

def value_keys():
    """Yields (dotted key, documented?) for values.yaml, following the
    helm-docs convention: a `# --` comment right above a key documents it and
    everything under it."""
    documented = {}
    stack = []  # (indent, key)
    pending_doc = False
    for line in open(os.path.join(CHART, "values.yaml")):
        stripped = line.strip()
        if stripped.startswith("# --"):
            pending_doc = True
            continue
        if not stripped or stripped.startswith("#"):
            continue
        m = re.match(r"^( *)([A-Za-z0-9_.\-/]+):(\s|$)", line)
        if not m or stripped.startswith("- "):
            pending_doc = False
            continue
        indent = len(m.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        if any(documented.get(".".join(k for _, k in stack[: i + 1])) for i in range(len(stack))):
            pending_doc = False
            continue  # inside a documented block: part of its default
        stack.append((indent, m.group(2)))
        key = ".".join(k for _, k in stack)
        documented[key] = pending_doc
        pending_doc = False
    return documented


def chart_checks():
    keys = value_keys()

    @check("values.yaml: every value has a `# --` comment (or belongs to a documented block)")
    def _():
        vals = yaml.safe_load(open(os.path.join(CHART, "values.yaml")))
        undocumented = []
        for key, doc in keys.items():
            node = vals
            for part in key.split("."):
                node = node[part]
            is_group = isinstance(node, dict) and node and not doc
            if not doc and not is_group:
                undocumented.append(key)
        assert not undocumented, "undocumented values: %s" % undocumented

    @check("README.md: every documented value is in the values table")
    def _():
        readme = open(os.path.join(CHART, "README.md")).read()
        missing = [k for k, doc in keys.items() if doc and "| `%s` |" % k not in readme]
        assert not missing, "values missing from README.md: %s" % missing

    @check("Chart.yaml: apiVersion v2, version 0.1.0, appVersion 0.1.0")
    def _():
        meta = yaml.safe_load(open(os.path.join(CHART, "Chart.yaml")))
        assert (meta["apiVersion"], meta["version"], str(meta["appVersion"])) == ("v2", "0.1.0", "0.1.0"), meta

    @check("ci/: the eight documented variants exist")
    def _():
        have = sorted(f for f in os.listdir(os.path.join(CHART, "ci")) if f.endswith("-values.yaml"))
        want = sorted("%s-values.yaml" % n for n in (
            "external-redis", "bundled-redis", "ingress-tls", "autoscaling", "servicemonitor", "token-auth",
            "gateway", "observability"))
        assert set(want) <= set(have), have


# ------------------------------------------- values that must be refused --

BAD_VALUES = {
    "auth mode outside guest|token": ("auth: {mode: password}\n", "mode"),
    "log format outside text|json": ("relay: {logFormat: xml}\n", "logFormat"),
    "credentials inside redis.url": ("redis: {url: 'redis://:hunter2@redis:6379'}\n", "url"),
    "no Redis at all": ("redis: {url: '', bundled: {enabled: false}}\n", "url"),
    "HTTPRoute without a Gateway": ("httpRoute: {enabled: true}\n", "parentRefs"),
    "admin port below 1024": ("relay: {adminPort: 90}\n", "adminPort"),
    "drain seconds as a string": ("relay: {drainSecs: '10'}\n", "drainSecs"),
    "zero termination margin": ("lifecycle: {terminationMarginSeconds: 0}\n", "terminationMarginSeconds"),
    "unknown top-level key (typo)": ("replicas: 3\n", "replicas"),
    "unknown nested key (typo)": ("ingress: {enable: true}\n", "enable"),
    "privileged port": ("relay: {port: 80}\n", "port"),
    "comma inside an origin": ("relay: {allowedOrigins: ['https://a.example,https://b.example']}\n", "allowedOrigins"),
    "ingress without hosts": ("ingress: {enabled: true, hosts: []}\n", "hosts"),
    "minReplicas above maxReplicas": ("autoscaling: {enabled: true, minReplicas: 5, maxReplicas: 2}\n", "minReplicas"),
    "bad secret key name": ("auth: {secretKey: 'has space'}\n", "secretKey"),
}


def stable_render_checks(tools):
    """With secretSeed, two renders are identical (GitOps tools re-render)."""
    venv = os.environ.get("RELAY_TOOLS_VENV", os.path.expanduser("~/.cache/relay-tools/venv"))
    py = os.path.join(venv, "bin", "python")
    render = os.path.join(tools, "helm_render.py")
    scratch = tempfile.mkdtemp(prefix="relay-chart-stable-")
    env = dict(os.environ, HOME=scratch, XDG_CACHE_HOME=scratch + "/cache",
               XDG_CONFIG_HOME=scratch + "/config", XDG_DATA_HOME=scratch + "/data")

    def secrets(values_text):
        path = os.path.join(scratch, "v.yaml")
        with open(path, "w") as fh:
            fh.write(values_text)
        out = subprocess.run([py, render, CHART, "-f", path], env=env, check=True,
                             stdout=subprocess.PIPE, universal_newlines=True).stdout
        return [d for d in yaml.safe_load_all(out) if d and d["kind"] == "Secret"]

    @check("secretSeed: two renders give the same Secrets; without it they differ")
    def _():
        a, b = secrets("secretSeed: pin-1\n"), secrets("secretSeed: pin-1\n")
        assert len(a) == 2 and a == b, "pinned secrets changed between renders"
        c = secrets("secretSeed: pin-2\n")
        assert c != a, "the seed does not change the secrets"
        d, e = secrets("{}\n"), secrets("{}\n")
        assert d != e, "unpinned secrets are random (if this fails, the test is wrong, not the chart)"


def bad_values_checks(tools):
    venv = os.environ.get("RELAY_TOOLS_VENV", os.path.expanduser("~/.cache/relay-tools/venv"))
    py = os.path.join(venv, "bin", "python")
    render = os.path.join(tools, "helm_render.py")
    scratch = tempfile.mkdtemp(prefix="relay-chart-bad-")
    env = dict(os.environ, HOME=scratch, XDG_CACHE_HOME=scratch + "/cache",
               XDG_CONFIG_HOME=scratch + "/config", XDG_DATA_HOME=scratch + "/data")
    for i, (what, (text, needle)) in enumerate(sorted(BAD_VALUES.items())):
        @check("refused at install time: %s" % what)
        def _(i=i, text=text, needle=needle):
            path = os.path.join(scratch, "bad%d.yaml" % i)
            with open(path, "w") as fh:
                fh.write(text)
            p = subprocess.run([py, render, CHART, "-f", path, "-o", os.devnull], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
            assert p.returncode != 0, "rendered without error:\n" + text
            assert needle in p.stdout, "error does not name %r:\n%s" % (needle, p.stdout[-2000:])


# ------------------------------------------------------------------ main --

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("rendered")
    ap.add_argument("--tools", help="scripts/ (holds helm_render.py): also check that bad values are refused")
    a = ap.parse_args()

    files = sorted(f for f in os.listdir(a.rendered) if f.endswith(".yaml"))
    expected = ["default"] + sorted(f[: -len("-values.yaml")] for f in os.listdir(os.path.join(CHART, "ci"))
                                    if f.endswith("-values.yaml"))
    renders = {}

    @check("every variant was rendered (default + ci/*-values.yaml)")
    def _():
        missing = [n for n in expected if "%s.yaml" % n not in files]
        assert not missing, "not rendered: %s" % missing

    for f in files:
        r = Render(os.path.join(a.rendered, f))
        renders[r.name] = r
        per_variant_checks(r)
        variant_checks(r)
    chart_checks()
    if a.tools:
        bad_values_checks(a.tools)
        stable_render_checks(a.tools)

    passed = failed = 0
    for name, fn in CHECKS:
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - report every failure and go on
            failed += 1
            print("FAIL %s" % name)
            if isinstance(e, AssertionError):
                frame = traceback.extract_tb(e.__traceback__)[-1]
                detail = str(e) or "assertion failed: %s (line %d)" % (frame.line, frame.lineno)
            else:
                detail = traceback.format_exc()
            for line in detail.rstrip().splitlines():
                print("     %s" % line)
        else:
            passed += 1
            print("ok   %s" % name)
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
