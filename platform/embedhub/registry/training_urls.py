"""Include under api/v1/ (embedhub/urls.py): path("", include("embedhub.registry.training_urls"))."""

from django.urls import path

from embedhub.registry.training_apis import TrainingSetUploadApi

urlpatterns = [
    path("training-sets/", TrainingSetUploadApi.as_view(), name="training-set-upload"),
]
