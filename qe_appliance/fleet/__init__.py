"""The agent fleet: worker processes behind a connection pool and a load balancer."""
