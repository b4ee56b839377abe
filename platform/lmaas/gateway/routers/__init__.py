"""One router per resource of the gateway's API."""
