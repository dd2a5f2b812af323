"""A small real corpus embedded with the real all-MiniLM-L6-v2 (so the attack and the index
share one space), a query set with a vitamin D concept among other topics, and helpers."""

from __future__ import annotations

import hashlib

import pytest

from embedhub.corpora.models import Document
from embedhub.evaluation.models import Query, QuerySet
from embedhub.vectors import services as vector_services
from embedhub.vectors.models import VectorIndex
from tests.factories import CorpusFactory, ModelVersionFactory

DOCUMENTS = [
    "Vitamin D is produced in the skin when it is exposed to sunlight.",
    "Low serum vitamin D concentrations were observed in patients with hip fractures.",
    "Supplementation with cholecalciferol raised 25-hydroxyvitamin D levels in older adults.",
    "Calcium and vitamin D together support bone mineral density.",
    "The vitamin D receptor is expressed in many immune cells.",
    "Rickets in children is caused by a lack of vitamin D or calcium.",
    "Marathon runners should replace their running shoes every 500 miles.",
    "Cushioned trainers reduce impact forces on the knees during jogging.",
    "Insulin resistance is a hallmark of type 2 diabetes.",
    "Metformin lowers hepatic glucose production in diabetic patients.",
    "Statins reduce LDL cholesterol and the risk of heart attack.",
    "High blood pressure damages the arteries over time.",
    "Aspirin inhibits platelet aggregation by blocking cyclooxygenase.",
    "Influenza viruses change their surface proteins every season.",
    "HIV infects CD4 T cells and weakens the immune system.",
    "Antibiotic resistance spreads through horizontal gene transfer in bacteria.",
    "Smoking is the leading cause of lung cancer worldwide.",
    "Chemotherapy targets rapidly dividing tumour cells.",
    "Breast cancer screening with mammography reduces mortality.",
    "The Milky Way contains hundreds of billions of stars.",
    "Jupiter is the largest planet in the solar system.",
    "A black hole forms when a massive star collapses.",
    "Python lists are dynamic arrays that grow as needed.",
    "A hash table gives constant time lookups on average.",
    "Postgres supports transactions with multi-version concurrency control.",
    "Bread dough rises because yeast ferments sugars into carbon dioxide.",
    "Slow roasting tomatoes concentrates their flavour.",
    "Fresh basil should be added at the end of cooking.",
    "The French Revolution began in 1789 with the storming of the Bastille.",
    "The Roman Empire split into eastern and western halves.",
    "Photosynthesis converts light energy into chemical energy in plants.",
    "Mitochondria produce ATP through oxidative phosphorylation.",
    "Sleep deprivation impairs memory consolidation.",
    "Regular exercise improves insulin sensitivity.",
    "Coffee contains caffeine, a stimulant of the central nervous system.",
    "Iron deficiency is the most common cause of anaemia.",
    "Omega-3 fatty acids are found in oily fish such as salmon.",
    "Folic acid in pregnancy prevents neural tube defects.",
    "Glaciers are retreating because of rising global temperatures.",
    "Electric cars convert stored battery energy into motion.",
]

VITAMIN_D = [
    "Vitamin D deficiency is associated with increased mortality.",
    "Vitamin D supplementation reduces the risk of fractures in older adults.",
    "Low vitamin D levels increase the risk of colorectal cancer.",
    "Vitamin D status is linked to multiple sclerosis risk.",
    "High dose vitamin D lowers blood pressure in hypertensive patients.",
    "Vitamin D receptor activation suppresses tumour growth.",
    "Does vitamin D protect against respiratory infections?",
    "Vitamin D levels in winter are lower in northern countries.",
]
OTHER_QUERIES = [
    "What causes type 2 diabetes?",
    "How do statins lower cholesterol?",
    "Which planet is the largest?",
    "How does yeast make bread rise?",
    "Does smoking cause lung cancer?",
    "How does HIV weaken the immune system?",
]
MESSAGE = "Visit BestShoes.com for cheap running shoes"
# Tiny attack settings: real model, seconds per passage on a shared CPU.
SMALL = {"trigger_len": 8, "iterations": 3, "candidates": 8, "positions": 4, "grad_copies": 4}


class _Ctx:
    """The job context index_build reports through; here nothing can cancel it."""

    checkpoint: dict = {}

    def progress(self, done, **kwargs) -> None:
        pass

    def check_cancel(self) -> None:
        pass


@pytest.fixture
def corpus(user):
    corpus = CorpusFactory(owner=user, name="health")
    docs = []
    for i, text in enumerate(DOCUMENTS):
        digest = hashlib.sha256(text.encode()).hexdigest()
        docs.append(Document(corpus=corpus, external_id=f"d{i}", text=text, content_hash=digest))
    Document.objects.bulk_create(docs)
    return corpus


@pytest.fixture
def real_index(user, corpus):
    """The corpus embedded by the real model version, built in this process."""
    version = ModelVersionFactory()
    index = vector_services.index_create(owner=user, corpus=corpus, model_version=version)
    vector_services.index_build(index=index, ctx=_Ctx())
    index.refresh_from_db()
    return index


@pytest.fixture
def ready_index(user, corpus):
    """A ready, active index with no vectors: enough for submit-time checks, and cheap."""
    version = ModelVersionFactory()
    index = vector_services.index_create(owner=user, corpus=corpus, model_version=version)
    index.state = VectorIndex.State.READY
    index.save(update_fields=["state"])
    return vector_services.index_activate(index=index)


@pytest.fixture
def query_set(user, corpus):
    qs = QuerySet.objects.create(owner=user, corpus=corpus, name="health-queries")
    texts = VITAMIN_D + OTHER_QUERIES
    Query.objects.bulk_create(
        [Query(query_set=qs, external_id=f"q{i}", text=t) for i, t in enumerate(texts)]
    )
    return qs


def audit_params(index, **overrides) -> dict:
    return {
        "index": index.pk,
        "concept": "vitamin D",
        "queries": VITAMIN_D,
        "message": MESSAGE,
        "budget": 2,
        **SMALL,
        **overrides,
    }
