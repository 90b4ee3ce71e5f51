# Operations: Prometheus rules and their unit tests, Grafana dashboards, Kubernetes manifests, compose.
.PHONY: check-ops ops-rules grafana-schema

# promtool (rule unit tests) and prometheus (the live alert test) come from Debian's package.
# kubernetes-validate and jsonschema are pinned in requirements.lock.
system-deps::
	@command -v promtool >/dev/null && command -v prometheus >/dev/null || \
		{ apt-get update && apt-get install -y prometheus; }

ops-rules: deps ## Rewrite k8s/base/monitoring/prometheusrule.yaml from deploy/prometheus/rules/*.yml
	$(PY) deploy/prometheus/generate_k8s_rules.py

grafana-schema: ## Regenerate tests/ops/grafana_dashboard.schema.json from Grafana's TypeScript types (npm)
	@command -v npm >/dev/null || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y npm; }
	@tmp=$$(mktemp -d) && cd $$tmp && npm init -y >/dev/null && \
	npm install --silent @grafana/schema@13.2.3 ts-json-schema-generator@2.4.0 && \
	npx ts-json-schema-generator --no-type-check --type Dashboard \
		--path node_modules/@grafana/schema/dist/types/raw/dashboard/x/types.gen.d.ts \
		-o $(CURDIR)/tests/ops/grafana_dashboard.schema.json && rm -rf $$tmp

check-ops: deps system-deps ## tests/ops: promtool, kubernetes-validate, dashboards, compose, a live Prometheus
	$(VENV)/bin/ruff check tests/ops deploy
	$(VENV)/bin/pytest -q -p no:cacheprovider tests/ops
