"""REST method handlers, registered by name in :mod:`bitrix24_emulator.methods.registry`."""
