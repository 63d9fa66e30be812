"""The Asterisk side: webhooks and AMI turned into domain events."""
