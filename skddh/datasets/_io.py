def load_image_table(*a, **k):
    raise NotImplementedError


def save_image_table(*a, **k):
    raise NotImplementedError
