"""A sweep file: its frozen dataclasses (`schema`), loading and validation (`load`), and
the field readers (`fields`)."""
