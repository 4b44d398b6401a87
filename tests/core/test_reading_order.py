"""Reading order: the first branch streams live, later ones are flushed when earlier ones end."""

from pbd_core import BranchEndEvent, BranchStartEvent, FinalEvent, ReadingOrder, TokenEvent


def test_later_branches_are_held_until_earlier_ones_end():
    order = ReadingOrder()
    feed = order.feed
    assert feed(TokenEvent("intro ", None, "plan")) == ["intro "]
    feed(BranchStartEvent(0, "A"))
    feed(BranchStartEvent(1, "B"))
    assert feed(TokenEvent("####A:", 0, "parallel")) == ["####A:"]
    assert feed(TokenEvent("####B:", 1, "parallel")) == []
    assert feed(TokenEvent(" b1", 1, "parallel")) == []
    assert feed(TokenEvent(" a1", 0, "parallel")) == [" a1"]
    assert feed(BranchEndEvent(1, "end_marker", " b1")) == []
    assert feed(BranchEndEvent(0, "end_marker", " a1")) == ["####B:", " b1"]
    assert feed(TokenEvent("####%%%%", None, "merge")) == ["####%%%%"]
    assert feed(FinalEvent(result=None)) == []


def test_interrupted_block_is_flushed_in_order_at_the_end():
    order = ReadingOrder()
    order.feed(BranchStartEvent(0, "A"))
    order.feed(BranchStartEvent(1, "B"))
    order.feed(TokenEvent("b", 1, "parallel"))
    assert order.feed(TokenEvent("a", 0, "parallel")) == ["a"]
    assert order.feed(FinalEvent(result=None)) == ["b"]
