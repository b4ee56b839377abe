"""The kopf handlers of the lmaas operator: `kopf run -A -m lmaas_operator.handlers`.

Importing this package registers every handler. Each handler is thin: it parses the spec
with the resource's pydantic model and calls a plain reconcile function.
"""

from lmaas_operator.handlers import adapter, catalog, finetune, lifecycle, service, tenant

__all__ = ["adapter", "catalog", "finetune", "lifecycle", "service", "tenant"]
