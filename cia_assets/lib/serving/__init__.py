"""Model endpoints: packaged models, local model servers, deploys, routing and promotion."""
