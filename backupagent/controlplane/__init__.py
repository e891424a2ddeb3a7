"""The reference control plane: a self-hostable server for the Agent API.

It exists so the agent can be tried and tested end to end without the hosted
service, and so the protocol has an executable, strict reading. Importing this
package is cheap; FastAPI and uvicorn are imported only by ``app``, ``cli`` and
``testing`` (the optional ``server`` extra), never by the agent.
"""

from __future__ import annotations
