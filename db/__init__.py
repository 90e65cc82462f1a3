"""The job store: SQLAlchemy async ORM, Alembic migrations, and query functions with domain names.

    store = await open_store(url)            # db.session: creates/migrates the database
    job = await create_job(store, NewJob(…)) # db.jobs: every function takes the store, returns records
    await store.close()

Never imports torch or discord.
"""
