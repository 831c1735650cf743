"""traceline."""
