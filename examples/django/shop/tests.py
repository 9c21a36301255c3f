"""The shop with Django's test client: ``python manage.py test shop``.

The test client calls Django directly, with no ``SessionPublisher`` around
it, so ``zodbsession.testing.as_request`` plays the publisher's part for the
views that use the app's own ZODB data: one connection and one transaction
for the request, committed when the block ends, aborted when it raises.
"""

from __future__ import annotations

from django.contrib.auth.models import User
from django.test import TestCase, override_settings
from ZODB import DB
from ZODB.MappingStorage import MappingStorage

from shop.views import SupplierError
from zodbsession.django import close_database, use_database
from zodbsession.testing import as_request


@override_settings(ZODBSESSION_URI="memory://")
class ShopTests(TestCase):
    def setUp(self) -> None:
        self.db = DB(MappingStorage())
        use_database(self.db)  # what the backend uses outside as_request()
        self.addCleanup(self.db.close)
        self.addCleanup(close_database)
        User.objects.create_user("alice", password="wonderland")

    def state(self) -> dict:
        with as_request(self.db):
            return self.client.get("/state").json()

    def test_login_cart_checkout_logout(self) -> None:
        self.client.post("/login", {"username": "alice", "password": "wonderland"})
        self.assertEqual(self.state()["user"], "alice")
        self.client.post("/cart", {"item": "apple"})
        self.assertEqual(self.state()["cart"], ["apple"])
        with as_request(self.db):
            response = self.client.post("/checkout")
        self.assertEqual(response.status_code, 303)
        state = self.state()
        self.assertEqual((state["cart"], state["orders"]), ([], 1))
        self.assertIn("Order 1 placed.", state["messages"])
        self.client.post("/logout")
        self.assertEqual(self.state()["user"], None)

    def test_a_failed_checkout_keeps_the_cart_and_records_no_order(self) -> None:
        self.client.force_login(User.objects.get(username="alice"))
        self.client.post("/cart", {"item": "unobtainium"})
        with self.assertLogs("django.request", "ERROR"), self.assertRaises(SupplierError), \
                as_request(self.db):
            self.client.post("/checkout")
        state = self.state()
        self.assertEqual((state["cart"], state["orders"]), (["unobtainium"], 0))

    def test_a_wrong_password_is_a_message_not_a_login(self) -> None:
        response = self.client.post("/login", {"username": "alice", "password": "nope"})
        self.assertEqual(response.status_code, 303)
        state = self.state()
        self.assertEqual((state["user"], state["messages"]), (None, ["Wrong name or password."]))

    def test_the_test_clients_session_is_the_shops_session(self) -> None:
        session = self.client.session
        session["cart"] = ["pear"]
        session.save()
        self.assertEqual(self.state()["cart"], ["pear"])
