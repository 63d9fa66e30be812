"""In-memory data of an emulated portal: users and CRM."""
