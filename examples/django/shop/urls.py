"""The shop's URLs."""

from django.urls import path

from shop import views

urlpatterns = [
    path("", views.index, name="index"),
    path("state", views.state, name="state"),
    path("login", views.login, name="login"),
    path("cart", views.add_to_cart, name="cart"),
    path("checkout", views.checkout, name="checkout"),
    path("logout", views.logout, name="logout"),
]
