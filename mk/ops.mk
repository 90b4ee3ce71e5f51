# Operations: Prometheus rules and their unit tests, Grafana dashboards, Kubernetes manifests, compose.
.PHONY: check-ops ops-rules grafana-schema

# promtool (rule unit tests) and prometheus (the live alert test) come from Debian's package.
system-deps::
	@command -v promtool >/dev/null && command -v prometheus >/dev/null || \
		{ apt-get update && apt-get install -y prometheus; }
	@test -x $(VENV)/bin/kubernetes-validate || \
		$(VENV)/bin/pip install --quiet --disable-pip-version-check kubernetes-validate==1.37.0 jsonschema==4.26.0

# Rewrite k8s/base/monitoring/prometheusrule.yaml after changing deploy/prometheus/rules/*.yml.
ops-rules: deps
	$(PY) deploy/prometheus/generate_k8s_rules.py

# Regenerate tests/ops/grafana_dashboard.schema.json from Grafana's published TypeScript types.
grafana-schema:
	@tmp=$$(mktemp -d) && cd $$tmp && npm init -y >/dev/null && \
	npm install --silent @grafana/schema@13.2.3 ts-json-schema-generator@2.4.0 && \
	npx ts-json-schema-generator --no-type-check --type Dashboard \
		--path node_modules/@grafana/schema/dist/types/raw/dashboard/x/types.gen.d.ts \
		-o $(CURDIR)/tests/ops/grafana_dashboard.schema.json && rm -rf $$tmp

# Everything of tests/ops: promtool, kubernetes-validate, dashboards, compose, a live Prometheus.
check-ops: deps system-deps
	$(VENV)/bin/ruff check tests/ops deploy
	$(VENV)/bin/pytest -q -p no:cacheprovider tests/ops
