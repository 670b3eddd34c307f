"""`dus plan`, `dus build`, `dus verify`."""
