"""Bitrix24 REST client, OAuth app lifecycle, rate budget; imports nothing from the web layer."""
