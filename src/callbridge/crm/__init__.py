"""The CRM side."""
