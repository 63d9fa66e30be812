"""callbridge: connects Asterisk PBXs to Bitrix24 CRM."""

__version__ = "0.1.0"
