from intervals import merge_intervals, total_length


def test_disjoint():
    assert merge_intervals([(5, 6), (1, 2)]) == [(1, 2), (5, 6)]


def test_overlapping():
    assert merge_intervals([(1, 4), (2, 6), (8, 9)]) == [(1, 6), (8, 9)]


def test_total_length():
    assert total_length([(1, 4), (2, 6)]) == 5


def test_calendar_blocks_back_to_back_bookings():
    # Bookings are closed intervals: 9-10 and 10-11 form one 9-11 block.
    assert merge_intervals([(10, 11), (9, 10)]) == [(9, 11)]
