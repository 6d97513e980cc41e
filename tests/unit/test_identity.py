from archive.core.identity import Principal, PrincipalKind, Role


def test_roles_are_cumulative() -> None:
    admin = Principal(PrincipalKind.USER, "ada", "127.0.0.1", frozenset({Role.ADMIN}))
    reader = Principal(PrincipalKind.API_KEY, "script", "10.0.0.5", frozenset({Role.READER}))
    nobody = Principal(PrincipalKind.USER, "eve", "10.0.0.6")
    assert [admin.may(r) for r in Role] == [True, True, True]
    assert [reader.may(r) for r in Role] == [True, False, False]
    assert [nobody.may(r) for r in Role] == [False, False, False]
