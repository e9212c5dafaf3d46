from async_downloads import cache


def test_init_and_read(alice):
    collection_key, key = cache.init_download(alice, "a.csv")
    assert collection_key == f"async_downloads/{alice.pk}"
    assert cache.get_download(key)["state"] == "pending"
