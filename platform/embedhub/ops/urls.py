from django.urls import path

from embedhub.ops import views

urlpatterns = [path("metrics", views.metrics, name="metrics")]
