"""Repositories: every query lives here. They take the session, may flush, and never commit."""

from callbridge.storage.repositories.api_calls import ApiCallRepository
from callbridge.storage.repositories.base import Repository
from callbridge.storage.repositories.enterprises import EnterpriseRepository
from callbridge.storage.repositories.integrations import IntegrationRepository
from callbridge.storage.repositories.one_time_codes import OneTimeCodeRepository
from callbridge.storage.repositories.pbx_events import PbxEventRepository
from callbridge.storage.repositories.rate_budgets import RateBudgetRepository

__all__ = [
    "ApiCallRepository",
    "EnterpriseRepository",
    "IntegrationRepository",
    "OneTimeCodeRepository",
    "PbxEventRepository",
    "RateBudgetRepository",
    "Repository",
]
