import factory
from django.contrib.auth import get_user_model

from embedhub.corpora.models import Corpus, Document
from embedhub.registry.models import EmbeddingModel, ModelVersion
from workers.ml.spec import default_model_path


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)

    username = factory.Sequence(lambda n: f"user{n}")
    password = factory.django.Password("pw")


class CorpusFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Corpus

    owner = factory.SubFactory(UserFactory)
    name = factory.Sequence(lambda n: f"corpus-{n}")


class DocumentFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Document

    corpus = factory.SubFactory(CorpusFactory)
    external_id = factory.Sequence(lambda n: f"doc{n}")
    title = factory.Sequence(lambda n: f"Title {n}")
    text = factory.Sequence(lambda n: f"Document number {n} about topic {n % 7}.")
    content_hash = factory.Sequence(lambda n: f"{n:064x}")


class EmbeddingModelFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = EmbeddingModel
        django_get_or_create = ("name",)

    name = "all-MiniLM-L6-v2"


class ModelVersionFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = ModelVersion

    model = factory.SubFactory(EmbeddingModelFactory)
    version = factory.Sequence(lambda n: n + 1)
    artifact_path = factory.LazyFunction(lambda: str(default_model_path()))
    dimension = 384
    # Like a staff-registered version; tests of private ones pass owner and visibility.
    visibility = ModelVersion.Visibility.SHARED
